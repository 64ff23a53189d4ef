package server

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ambient-mesh/ambient/istiod-lite/xds"
)

func adminHandler(x *xds.Server) http.Handler {
	mux := http.NewServeMux()
	// Profiles, as every Go control plane offers them; the admin port is bound to localhost.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		snap := x.Snapshot()
		if snap == nil {
			http.Error(w, "no snapshot yet", http.StatusServiceUnavailable)
			return
		}
		m := snap.Model()
		dump := map[string]any{"problems": m.Problems}
		enc := protojson.MarshalOptions{}
		for kind, res := range map[string]map[string]json.RawMessage{"workloads": {}, "services": {}, "authorizations": {}} {
			dump[kind] = res
		}
		for k, v := range m.Workloads {
			b, _ := enc.Marshal(v)
			dump["workloads"].(map[string]json.RawMessage)[k] = b
		}
		for k, v := range m.Services {
			b, _ := enc.Marshal(v)
			dump["services"].(map[string]json.RawMessage)[k] = b
		}
		for k, v := range m.Authorizations {
			b, _ := enc.Marshal(v)
			dump["authorizations"].(map[string]json.RawMessage)[k] = b
		}
		writeJSON(w, dump)
	})
	mux.HandleFunc("/debug/connections", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, x.Clients())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	_ = e.Encode(v)
}
