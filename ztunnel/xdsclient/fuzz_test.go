package xdsclient

import (
	"fmt"
	"slices"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// fuzzBase is a state with shared addresses and VIPs, so that responses exercise the indices'
// conflict handling.
func fuzzBase(t testing.TB) *State {
	st := emptyState()
	for _, r := range []*discoveryv3.DeltaDiscoveryResponse{
		resp(TypeWorkload, "1", nil, wlRes(wl("a", "10.0.0.1", "fd00::1")), wlRes(wl("b", "10.0.0.1")), wlRes(wl("c", "10.0.0.2"))),
		resp(TypeService, "2", nil, svcRes(svc("ns", "x", []string{"10.96.0.1"}, 80, 443)), svcRes(svc("ns", "y", []string{"10.96.0.1"}, 80))),
		resp(TypeAuthorization, "3", nil, authzRes(authz("ns", "p"))),
	} {
		var rej []rejection
		if st, rej = applyEnvoy(st, r, nil); len(rej) != 0 {
			t.Fatalf("base: %v", rej)
		}
	}
	return st
}

func marshal(t testing.TB, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzApply applies two arbitrary responses to a state: apply must not panic, must keep the
// indices consistent with the tables, must leave what it refused at its previous version, and
// must not modify the state it started from.
func FuzzApply(f *testing.F) {
	_, _, rootPEM := selfSigned(f, "root")
	for _, r := range []*discoveryv3.DeltaDiscoveryResponse{
		resp(TypeWorkload, "1", []string{"a"}, wlRes(wl("b", "10.0.0.2")), wlRes(wl("d", "10.0.0.1", "::ffff:10.0.0.2"))),
		resp(TypeWorkload, "1", []string{"b", "c"}, wlRes(wl("a", "10.0.0.3"))),
		resp(TypeService, "1", []string{"ns/x"}, svcRes(svc("ns", "z", []string{"10.96.0.1", "fd00::a"}, 80, 8080))),
		resp(TypeAuthorization, "1", []string{"ns/p"}, authzRes(authz("ns", "q"))),
		resp(TypeTrustBundle, "1", nil, bundleRes(rootPEM)),
	} {
		f.Add(marshal(f, r), []byte{}, false)
		f.Add(marshal(f, r), marshal(f, resp(r.TypeUrl, "2", []string{"a", "ns/y"})), true)
	}
	base := fuzzBase(f)
	types := []string{TypeWorkload, TypeService, TypeAuthorization, TypeTrustBundle}
	f.Fuzz(func(t *testing.T, first, second []byte, fixTypes bool) {
		st := base
		for _, b := range [][]byte{first, second} {
			r, err := decodeDeltaResponse(b)
			if err != nil {
				continue
			}
			if fixTypes {
				// Mutations rarely keep a type URL intact; repair them so that bodies decode.
				r.typeURL = types[len(r.nonce)%len(types)]
				for i := range r.resources {
					r.resources[i].bodyType = r.typeURL
				}
			}
			before := snapshot(st)
			next, rej := apply(st, r, nil)
			if d := snapshot(st); d != before {
				t.Fatalf("apply modified the previous state:\nbefore %s\nafter  %s", before, d)
			}
			if err := checkState(next); err != nil {
				t.Fatal(err)
			}
			for _, x := range rej {
				if x.name != "" && r.typeURL == TypeWorkload && next.Workload(x.name) != st.Workload(x.name) {
					t.Fatalf("refused workload %q changed", x.name)
				}
			}
			for _, typ := range types {
				if got := len(next.versions(typ)); got != next.Len(typ) {
					t.Fatalf("%s: %d versions for %d resources", typ, got, next.Len(typ))
				}
			}
			st = next
		}
	})
}

// FuzzIndex drives the address index with adds and removals of a few workloads over a few
// addresses, where conflicts are the rule: each byte triple is (op, uid, addresses).
func FuzzIndex(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 2, 3})
	f.Add([]byte{0, 3, 7, 0, 2, 7, 0, 1, 7, 1, 1, 0, 1, 2, 0, 0, 1, 4})
	f.Fuzz(func(t *testing.T, ops []byte) {
		st := emptyState()
		addrs := []string{"10.0.0.1", "10.0.0.2", "fd00::1"}
		for i := 0; i+2 < len(ops) && i < 300; i += 3 {
			uid := fmt.Sprint("w", ops[i+1]%5)
			var r *discoveryv3.DeltaDiscoveryResponse
			if ops[i]%3 == 0 {
				r = resp(TypeWorkload, "n", []string{uid})
			} else {
				w := &workloadv1.Workload{Uid: uid}
				for j, a := range addrs {
					if ops[i+2]&(1<<j) != 0 {
						w.Addresses = append(w.Addresses, addrBytes(a))
					}
				}
				if ops[i+2]&8 != 0 && len(w.Addresses) > 0 {
					w.Addresses = append(w.Addresses, w.Addresses[0]) // listed twice
				}
				r = resp(TypeWorkload, "n", nil, wlRes(w))
			}
			next, rej := applyEnvoy(st, r, nil)
			if len(rej) != 0 {
				t.Fatalf("refused: %v", rej)
			}
			if err := checkState(next); err != nil {
				t.Fatalf("op %d: %v", i/3, err)
			}
			st = next
		}
	})
}

// snapshot describes a state's contents and indices, to detect that it changed.
func snapshot(s *State) string {
	var out []string
	for k, v := range s.byAddr.first {
		out = append(out, fmt.Sprint(k, "=", v.GetUid(), len(s.byAddr.more[k])))
	}
	for k, v := range s.byVIP.first {
		out = append(out, fmt.Sprint(k, "=", serviceName(v), len(s.byVIP.more[k])))
	}
	for n, e := range s.workloads {
		out = append(out, fmt.Sprintf("%s@%s/%p", n, e.version, e.msg))
	}
	for n, e := range s.services {
		out = append(out, fmt.Sprintf("%s@%s/%p", n, e.version, e.msg))
	}
	for n, e := range s.authz {
		out = append(out, fmt.Sprintf("%s@%s/%p", n, e.version, e.msg))
	}
	slices.Sort(out)
	return fmt.Sprint(s.bundle != nil, out)
}
