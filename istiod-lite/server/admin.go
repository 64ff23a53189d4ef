package server

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"maps"
	"net/http"
	"net/http/pprof"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ambient-mesh/ambient/api/status"
	"github.com/ambient-mesh/ambient/internal/version"
	"github.com/ambient-mesh/ambient/istiod-lite/ca"
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

// metricsHandler serves the metrics port: Prometheus metrics, and the summary ambientctl reads
// through the API server's pod proxy (api/status), which holds nothing secret.
func metricsHandler(reg *prometheus.Registry, x *xds.Server, keeper *ca.Keeper) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc(status.Path, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, istiodStatus(x, keeper))
	})
	return mux
}

func istiodStatus(x *xds.Server, keeper *ca.Keeper) status.Istiod {
	out := status.Istiod{Version: version.String(), Proxies: []status.Proxy{}, Problems: []status.Problem{}}
	for _, c := range x.Clients() {
		p := status.Proxy{ID: c.ID, Role: string(c.Role), Node: c.Node, ConnectedAt: c.ConnectedAt, UpToDate: true}
		for _, t := range slices.Sorted(maps.Keys(c.Types)) {
			ts := c.Types[t]
			if ts.Acked < ts.Sent || ts.LastNACK != "" {
				p.UpToDate = false
			}
			if ts.LastNACK != "" {
				p.LastNACK = ts.LastNACK
			}
		}
		out.Proxies = append(out.Proxies, p)
	}
	if snap := x.Snapshot(); snap != nil {
		for _, pr := range snap.Model().Problems {
			out.Problems = append(out.Problems, status.Problem{Kind: pr.Kind, Namespace: pr.Namespace, Name: pr.Name, Reason: pr.Reason, Message: pr.Message})
		}
	}
	if roots := keeper.Authority().Roots(); len(roots) > 0 {
		if b, _ := pem.Decode([]byte(roots[0])); b != nil {
			if c, err := x509.ParseCertificate(b.Bytes); err == nil {
				out.RootNotAfter = c.NotAfter
			}
		}
	}
	return out
}
