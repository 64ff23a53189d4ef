package xdsclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"net/netip"
	"slices"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

func addrBytes(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func wl(uid string, addrs ...string) *workloadv1.Workload {
	w := &workloadv1.Workload{Uid: uid, Name: "pod-" + uid, Namespace: "default", ServiceAccount: "default",
		TrustDomain: "cluster.local", TunnelProtocol: workloadv1.TunnelProtocol_HBONE}
	for _, a := range addrs {
		w.Addresses = append(w.Addresses, addrBytes(a))
	}
	return w
}

func svc(ns, host string, vips []string, ports ...uint32) *workloadv1.Service {
	s := &workloadv1.Service{Name: host, Namespace: ns, Hostname: host}
	for _, v := range vips {
		s.Addresses = append(s.Addresses, addrBytes(v))
	}
	for _, p := range ports {
		s.Ports = append(s.Ports, &workloadv1.Port{ServicePort: p, TargetPort: p + 1000})
	}
	return s
}

func authz(ns, name string) *workloadv1.Authorization {
	return &workloadv1.Authorization{Namespace: ns, Name: name, Action: workloadv1.Action_DENY}
}

// res wraps m as a resource named name, with a content-hash-like version as the server makes.
func res(name string, m proto.Message) *discoveryv3.Resource {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	return &discoveryv3.Resource{Name: name, Version: fmt.Sprintf("%x", len(b)) + "-" + fmt.Sprint(hash(b)), Resource: a}
}

func hash(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

func wlRes(w *workloadv1.Workload) *discoveryv3.Resource { return res(w.Uid, w) }

func svcRes(s *workloadv1.Service) *discoveryv3.Resource {
	return res(s.Namespace+"/"+s.Hostname, s)
}

func authzRes(a *workloadv1.Authorization) *discoveryv3.Resource {
	return res(a.Namespace+"/"+a.Name, a)
}

func resp(typ, nonce string, removed []string, rs ...*discoveryv3.Resource) *discoveryv3.DeltaDiscoveryResponse {
	return &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typ, Nonce: nonce, Resources: rs, RemovedResources: removed, SystemVersionInfo: "1"}
}

// selfSigned returns a self-signed CA certificate for dnsName and its key.
func selfSigned(t testing.TB, dnsName string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: dnsName},
		DNSNames:              []string{dnsName},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func bundleRes(pems ...[]byte) *discoveryv3.Resource {
	b := &cav1.TrustBundle{TrustDomain: "cluster.local"}
	for _, p := range pems {
		b.Roots = append(b.Roots, string(p))
	}
	return res(TrustBundleName, b)
}

// checkState reports an inconsistency of s: a table entry under another name than its own, or
// an index that differs from one built from scratch.
func checkState(s *State) error {
	for n, e := range s.workloads {
		if e.msg.GetUid() != n {
			return fmt.Errorf("workload %q held as %q", e.msg.GetUid(), n)
		}
	}
	for n, e := range s.services {
		if serviceName(e.msg) != n {
			return fmt.Errorf("service %q held as %q", serviceName(e.msg), n)
		}
	}
	for n, e := range s.authz {
		if e.msg.GetNamespace()+"/"+e.msg.GetName() != n {
			return fmt.Errorf("authorization %q/%q held as %q", e.msg.GetNamespace(), e.msg.GetName(), n)
		}
	}
	if err := checkIndex("address", s.byAddr, s.workloads); err != nil {
		return err
	}
	return checkIndex("VIP", s.byVIP, s.services)
}

func checkIndex[K comparable, V any](what string, ix index[K, V], table map[string]entry[V]) error {
	want := map[K][]string{}
	var buf []K
	for _, n := range slices.Sorted(maps.Keys(table)) {
		buf = ix.keys(table[n].msg, buf[:0])
		for _, k := range buf {
			want[k] = append(want[k], n)
		}
	}
	got := map[K][]string{}
	for k, v := range ix.first {
		got[k] = append(got[k], ix.name(v))
		for _, o := range ix.more[k] {
			got[k] = append(got[k], ix.name(o))
		}
	}
	for k := range ix.more {
		if _, ok := ix.first[k]; !ok {
			return fmt.Errorf("%s index: %v in more but not in first", what, k)
		}
		if len(ix.more[k]) == 0 {
			return fmt.Errorf("%s index: %v has an empty more", what, k)
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		return fmt.Errorf("%s index differs from one rebuilt (-want +got):\n%s", what, d)
	}
	// Every value indexed must be the one the table holds, not an old version.
	for k, v := range ix.first {
		if e, ok := table[ix.name(v)]; !ok || any(e.msg) != any(v) {
			return fmt.Errorf("%s index: %v points at a stale %q", what, k, ix.name(v))
		}
	}
	return nil
}

// fromEnvoy is r as the client decodes it: marshalled by the generated Envoy types, decoded by
// wire.go. Tests build responses with the generated types, so that each one also checks the codec.
func fromEnvoy(r *discoveryv3.DeltaDiscoveryResponse) *deltaResponse {
	b, err := proto.Marshal(r)
	if err != nil {
		panic(err)
	}
	d, err := decodeDeltaResponse(b)
	if err != nil {
		panic(err)
	}
	return d
}

// applyEnvoy is apply of a response built with the generated Envoy types.
func applyEnvoy(prev *State, r *discoveryv3.DeltaDiscoveryResponse, v Validator) (*State, []rejection) {
	return apply(prev, fromEnvoy(r), v)
}
