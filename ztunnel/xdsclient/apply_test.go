package xdsclient

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// applyAll applies steps in order and returns the final state and every name rejected.
func applyAll(t *testing.T, v Validator, steps ...*discoveryv3.DeltaDiscoveryResponse) (*State, []string) {
	t.Helper()
	st := emptyState()
	var rejected []string
	for i, r := range steps {
		next, rej := applyEnvoy(st, r, v)
		for _, x := range rej {
			rejected = append(rejected, x.name)
		}
		if err := checkState(next); err != nil {
			t.Fatalf("after step %d: %v", i, err)
		}
		st = next
	}
	return st, rejected
}

func TestApplyWorkloads(t *testing.T) {
	w1, w2 := wl("u1", "10.0.0.1", "fd00::1"), wl("u2", "10.0.0.2")
	w1moved := wl("u1", "10.0.0.9")
	dupA, dupB := wl("a", "10.0.0.5"), wl("b", "10.0.0.5")
	badBody := &discoveryv3.Resource{Name: "u1", Version: "x", Resource: &anypb.Any{TypeUrl: TypeWorkload, Value: []byte{0xff, 0xff}}}
	wrongType := res("u1", svc("ns", "h", nil))
	wrongType.Resource.TypeUrl = TypeWorkload + "x"
	shortAddr := wl("u1")
	shortAddr.Addresses = [][]byte{{10, 0, 0}}

	tests := []struct {
		name         string
		steps        []*discoveryv3.DeltaDiscoveryResponse
		wantRejected []string
		wantUIDs     []string
		wantAddr     map[string]string // address -> uid, "" for none
	}{{
		name:     "add",
		steps:    []*discoveryv3.DeltaDiscoveryResponse{resp(TypeWorkload, "1", nil, wlRes(w1), wlRes(w2))},
		wantUIDs: []string{"u1", "u2"},
		wantAddr: map[string]string{"10.0.0.1": "u1", "fd00::1": "u1", "10.0.0.2": "u2", "::ffff:10.0.0.2": "u2", "10.0.0.3": ""},
	}, {
		name: "remove",
		steps: []*discoveryv3.DeltaDiscoveryResponse{
			resp(TypeWorkload, "1", nil, wlRes(w1), wlRes(w2)),
			resp(TypeWorkload, "2", []string{"u2", "never-held"}),
		},
		wantUIDs: []string{"u1"},
		wantAddr: map[string]string{"10.0.0.1": "u1", "10.0.0.2": ""},
	}, {
		name: "address changes",
		steps: []*discoveryv3.DeltaDiscoveryResponse{
			resp(TypeWorkload, "1", nil, wlRes(w1)),
			resp(TypeWorkload, "2", nil, wlRes(w1moved)),
		},
		wantUIDs: []string{"u1"},
		wantAddr: map[string]string{"10.0.0.1": "", "fd00::1": "", "10.0.0.9": "u1"},
	}, {
		name: "shared address: smallest uid wins, the next is promoted on removal",
		steps: []*discoveryv3.DeltaDiscoveryResponse{
			resp(TypeWorkload, "1", nil, wlRes(dupB)),
			resp(TypeWorkload, "2", nil, wlRes(dupA)),
			resp(TypeWorkload, "3", []string{"a"}),
		},
		wantUIDs: []string{"b"},
		wantAddr: map[string]string{"10.0.0.5": "b"},
	}, {
		name: "undecodable body keeps the previous version, the rest applies",
		steps: []*discoveryv3.DeltaDiscoveryResponse{
			resp(TypeWorkload, "1", nil, wlRes(w1)),
			resp(TypeWorkload, "2", nil, badBody, wlRes(w2)),
		},
		wantRejected: []string{"u1"},
		wantUIDs:     []string{"u1", "u2"},
		wantAddr:     map[string]string{"10.0.0.1": "u1", "10.0.0.2": "u2"},
	}, {
		name: "refused: wrong body type, uid not the name, short address, no body",
		steps: []*discoveryv3.DeltaDiscoveryResponse{
			resp(TypeWorkload, "1", nil, wrongType),
			resp(TypeWorkload, "2", nil, res("other", w2)),
			resp(TypeWorkload, "3", nil, wlRes(shortAddr)),
			resp(TypeWorkload, "4", nil, &discoveryv3.Resource{Name: "u9"}),
		},
		wantRejected: []string{"u1", "other", "u1", "u9"},
		wantAddr:     map[string]string{"10.0.0.2": ""},
	}, {
		name: "a name listed twice is refused",
		steps: []*discoveryv3.DeltaDiscoveryResponse{
			resp(TypeWorkload, "1", nil, wlRes(w1)),
			resp(TypeWorkload, "2", []string{"u1"}, wlRes(w1moved)),
			resp(TypeWorkload, "3", nil, wlRes(w2), wlRes(w2)),
		},
		wantRejected: []string{"u1", "u2"},
		wantUIDs:     []string{"u1"},
		wantAddr:     map[string]string{"10.0.0.1": "u1", "10.0.0.9": "", "10.0.0.2": ""},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, rejected := applyAll(t, nil, tt.steps...)
			if d := cmp.Diff(tt.wantRejected, rejected); d != "" {
				t.Errorf("rejected (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.wantUIDs, slices.Sorted(maps.Keys(maps.Collect(st.Workloads())))); d != "" {
				t.Errorf("workloads (-want +got):\n%s", d)
			}
			for a, want := range tt.wantAddr {
				if got := st.WorkloadByAddr(netip.MustParseAddr(a)).GetUid(); got != want {
					t.Errorf("WorkloadByAddr(%s) = %q, want %q", a, got, want)
				}
			}
		})
	}
}

func TestApplyDoesNotTouchPrevious(t *testing.T) {
	st, _ := applyAll(t, nil, resp(TypeWorkload, "1", nil, wlRes(wl("a", "10.0.0.5")), wlRes(wl("b", "10.0.0.6"))))
	before := st.WorkloadByAddr(netip.MustParseAddr("10.0.0.5"))
	next, _ := applyEnvoy(st, resp(TypeWorkload, "2", []string{"a"}, wlRes(wl("c", "10.0.0.5", "10.0.0.6"))), nil)
	if err := checkState(next); err != nil {
		t.Fatal(err)
	}
	if got := st.WorkloadByAddr(netip.MustParseAddr("10.0.0.5")); got != before || st.Workload("c") != nil || st.Workload("a") == nil {
		t.Errorf("the previous state changed")
	}
	if got := next.WorkloadByAddr(netip.MustParseAddr("10.0.0.6")).GetUid(); got != "b" {
		t.Errorf("next: 10.0.0.6 -> %q, want b (smaller uid than c)", got)
	}
	if got := next.WorkloadByAddr(netip.MustParseAddr("10.0.0.5")).GetUid(); got != "c" {
		t.Errorf("next: 10.0.0.5 -> %q, want c", got)
	}
	if same, _ := applyEnvoy(next, resp(TypeWorkload, "3", []string{"not-held"}), nil); same != next {
		t.Errorf("a response that changes nothing made a new state")
	}
}

func TestApplyServices(t *testing.T) {
	s1 := svc("ns", "a.ns.svc.cluster.local", []string{"10.96.0.1", "fd00::a"}, 80, 443)
	s1b := svc("ns", "a.ns.svc.cluster.local", []string{"10.96.0.1"}, 8080)
	badPort := svc("ns", "b.ns.svc.cluster.local", []string{"10.96.0.2"}, 70000)
	st, rejected := applyAll(t, nil,
		resp(TypeService, "1", nil, svcRes(s1), svcRes(badPort), res("ns/wrong", s1)),
	)
	if d := cmp.Diff([]string{"ns/b.ns.svc.cluster.local", "ns/wrong"}, rejected); d != "" {
		t.Errorf("rejected (-want +got):\n%s", d)
	}
	for ap, want := range map[string]bool{"10.96.0.1:80": true, "10.96.0.1:443": true, "[fd00::a]:80": true, "10.96.0.1:8080": false, "[::ffff:10.96.0.1]:443": true} {
		if got := st.ServiceByVIP(netip.MustParseAddrPort(ap)) != nil; got != want {
			t.Errorf("ServiceByVIP(%s) found = %v, want %v", ap, got, want)
		}
	}
	st, _ = applyEnvoy(st, resp(TypeService, "2", nil, svcRes(s1b)), nil)
	if err := checkState(st); err != nil {
		t.Fatal(err)
	}
	for ap, want := range map[string]bool{"10.96.0.1:80": false, "[fd00::a]:80": false, "10.96.0.1:8080": true} {
		if got := st.ServiceByVIP(netip.MustParseAddrPort(ap)) != nil; got != want {
			t.Errorf("after update: ServiceByVIP(%s) found = %v, want %v", ap, got, want)
		}
	}
	if st.Service("ns/a.ns.svc.cluster.local") != st.ServiceByVIP(netip.MustParseAddrPort("10.96.0.1:8080")) {
		t.Errorf("Service and ServiceByVIP disagree")
	}
}

func TestApplyTrustBundle(t *testing.T) {
	_, _, pem1 := selfSigned(t, "root-1")
	_, _, pem2 := selfSigned(t, "root-2")
	misnamed := bundleRes(pem1)
	misnamed.Name = "other-name"
	st, rejected := applyAll(t, nil,
		resp(TypeTrustBundle, "1", nil, bundleRes(pem1, pem2)),
		resp(TypeTrustBundle, "2", nil, bundleRes([]byte("not pem"))),
		resp(TypeTrustBundle, "3", nil, misnamed),
	)
	if d := cmp.Diff([]string{TrustBundleName, "other-name"}, rejected); d != "" {
		t.Errorf("rejected (-want +got):\n%s", d)
	}
	pool, pemBytes := st.Roots()
	if pool == nil || string(pemBytes) != string(pem1)+string(pem2) {
		t.Fatalf("roots: pool %v, pem %q; want both roots kept", pool, pemBytes)
	}
	st, _ = applyEnvoy(st, resp(TypeTrustBundle, "4", []string{TrustBundleName}), nil)
	if pool, _ := st.Roots(); pool != nil || st.TrustBundle() != nil || st.Len(TypeTrustBundle) != 0 {
		t.Errorf("a removed bundle is still held")
	}
}

func TestApplyValidatorAndUnknownType(t *testing.T) {
	refuse := func(typ, name string, m proto.Message) error {
		if a, ok := m.(*workloadv1.Authorization); ok && a.Name == "bad" {
			return errors.New("unsupported match")
		}
		return nil
	}
	st, rejected := applyAll(t, refuse,
		resp(TypeAuthorization, "1", nil, authzRes(authz("ns", "good")), authzRes(authz("ns", "bad")), res("ns/x", authz("ns", "y"))),
	)
	if d := cmp.Diff([]string{"ns/bad", "ns/x"}, rejected); d != "" {
		t.Errorf("rejected (-want +got):\n%s", d)
	}
	if st.Authorization("ns/good") == nil || st.Len(TypeAuthorization) != 1 {
		t.Errorf("authorizations: want ns/good only")
	}
	next, rej := applyEnvoy(st, resp("type.googleapis.com/foo.Bar", "2", nil), nil)
	if next != st || len(rej) != 1 || rej[0].name != "" {
		t.Errorf("unknown type: state changed or rejections %v", rej)
	}
}

func TestStoreSubscribeCoalesces(t *testing.T) {
	s := NewStore()
	ch, stop := s.Subscribe()
	defer stop()
	for i := range 3 {
		next, _ := applyEnvoy(s.Load(), resp(TypeWorkload, "n", nil, wlRes(wl(string(rune('a'+i))))), nil)
		s.publish(next)
	}
	<-ch
	select {
	case <-ch:
		t.Fatal("three changes made more than one pending notification")
	default:
	}
	if got := s.Load().Len(TypeWorkload); got != 3 {
		t.Errorf("Load after the notification holds %d workloads, want 3", got)
	}
	stop()
	s.publish(s.Load())
	select {
	case <-ch:
		t.Fatal("notified after unsubscribing")
	default:
	}
}
