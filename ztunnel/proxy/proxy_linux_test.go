package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/api/identity"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/redirect"
	"github.com/ambient-mesh/ambient/ztunnel/authz"
	"github.com/ambient-mesh/ambient/ztunnel/hbone"
	"github.com/ambient-mesh/ambient/ztunnel/inpod"
	"github.com/ambient-mesh/ambient/ztunnel/route"
)

// staticConfig is a Config over literal workloads.
type staticConfig struct{ ws []*workloadv1.Workload }

func (s staticConfig) WorkloadByAddr(a netip.Addr) *workloadv1.Workload {
	for _, w := range s.ws {
		for _, b := range w.Addresses {
			if x, _ := netip.AddrFromSlice(b); x == a {
				return w
			}
		}
	}
	return nil
}
func (staticConfig) ServiceByAddr(netip.AddrPort) *workloadv1.Service { return nil }
func (staticConfig) Endpoints(string) []*workloadv1.Workload          { return nil }
func (staticConfig) ServiceByName(string) *workloadv1.Service         { return nil }
func (s staticConfig) WorkloadByUID(uid string) *workloadv1.Workload {
	for _, w := range s.ws {
		if w.Uid == uid {
			return w
		}
	}
	return nil
}

var _ route.Lookup = staticConfig{}

// testCA issues workload certificates with one SPIFFE URI SAN.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) Get(_ context.Context, id identity.Identity) (*tls.Certificate, error) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs: nil}
	tmpl.URIs = append(tmpl.URIs, id.URL())
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

type fixedOrig netip.AddrPort

func (f fixedOrig) LookupOrigDst(netip.AddrPort) (netip.AddrPort, error) {
	return netip.AddrPort(f), nil
}

// twoPods makes two network namespaces joined by a veth pair, 10.77.0.1 and 10.77.0.2.
func twoPods(t *testing.T) (a, b string) {
	testutil.RequireRoot(t)
	suffix := fmt.Sprintf("%d", os.Getpid()%100000)
	a, b = "pxa-"+suffix, "pxb-"+suffix
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			testutil.SkipOrFail(t, fmt.Sprintf("ip %v: %v: %s", args, err, out))
		}
	}
	run("netns", "add", a)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", a).Run() })
	run("netns", "add", b)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", b).Run() })
	run("-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
	run("-n", a, "addr", "add", "10.77.0.1/24", "dev", "eth0")
	run("-n", b, "addr", "add", "10.77.0.2/24", "dev", "eth0")
	for _, ns := range []string{a, b} {
		run("-n", ns, "link", "set", "eth0", "up")
		run("-n", ns, "link", "set", "lo", "up")
	}
	return a, b
}

// inNS runs fn on a thread in the named namespace.
func inNS[T any](t *testing.T, name string, fn func() (T, error)) T {
	t.Helper()
	f := openNS(t, name)
	defer f.Close()
	v, err := redirect.InNetNS(int(f.Fd()), fn)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func openNS(t *testing.T, name string) *os.File {
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestHBONEBetweenPods: a connection from pod A is tunnelled over real HBONE (mTLS, HTTP/2
// CONNECT) from A's namespace to B's ztunnel listener, authorized there, and delivered to B's
// application; a DENY policy on the client's identity stops the next one.
func TestHBONEBetweenPods(t *testing.T) {
	nsA, nsB := twoPods(t)
	app := inNS(t, nsB, func() (net.Listener, error) { return net.Listen("tcp", "10.77.0.2:9000") })
	defer app.Close()
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	ca := newCA(t)
	wA := &workloadv1.Workload{Uid: "ua", Name: "client", Namespace: "shop", ServiceAccount: "client", TrustDomain: "cluster.local",
		Addresses: [][]byte{netip.MustParseAddr("10.77.0.1").AsSlice()}, TunnelProtocol: workloadv1.TunnelProtocol_HBONE}
	wB := &workloadv1.Workload{Uid: "ub", Name: "server", Namespace: "shop", ServiceAccount: "server", TrustDomain: "cluster.local",
		Addresses: [][]byte{netip.MustParseAddr("10.77.0.2").AsSlice()}, TunnelProtocol: workloadv1.TunnelProtocol_HBONE,
		AuthorizationPolicies: []string{"shop/deny-client"}}
	cfg := staticConfig{ws: []*workloadv1.Workload{wA, wB}}
	denyOf := func(principal string) *authz.Policies {
		p, err := authz.Compile([]*workloadv1.Authorization{{Name: "deny-client", Namespace: "shop", Action: workloadv1.Action_DENY,
			Rules: []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
				Principals: []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Exact{Exact: principal}}}}}}}}}}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	var policies atomic.Pointer[authz.Policies]
	empty := denyOf("cluster.local/ns/shop/sa/someone-else")
	policies.Store(empty)
	newProxy := func() *Proxy {
		return New(Deps{Config: func() Config { return cfg }, Policies: policies.Load, Certs: ca, Roots: func() *x509.CertPool { return ca.pool },
			OrigDst: fixedOrig(netip.MustParseAddrPort("10.77.0.2:9000")), TrustDomain: "cluster.local", Wait: 2 * time.Second,
			ClientConfig: hbone.DefaultClientConfig(), ServerConfig: hbone.DefaultServerConfig()})
	}
	pA, pB := newProxy(), newProxy() // one ztunnel per "node"
	mA, mB := inpod.New(inpod.Config{Handler: pA, Drain: time.Second}), inpod.New(inpod.Config{Handler: pB, Drain: time.Second})
	defer mA.Close()
	defer mB.Close()
	if err := mA.AddWorkload(context.Background(), &zdsv1.WorkloadInfo{Uid: "ua", Name: "client", Namespace: "shop", ServiceAccount: "client", Ips: []string{"10.77.0.1"}}, 1, openNS(t, nsA)); err != nil {
		t.Fatal(err)
	}
	if err := mB.AddWorkload(context.Background(), &zdsv1.WorkloadInfo{Uid: "ub", Name: "server", Namespace: "shop", ServiceAccount: "server", Ips: []string{"10.77.0.2"}}, 2, openNS(t, nsB)); err != nil {
		t.Fatal(err)
	}
	echo := func() (string, error) {
		// The app's connection as the redirector would hand it to ztunnel: to :15001 in A.
		c := inNS(t, nsA, func() (net.Conn, error) { return net.DialTimeout("tcp", "127.0.0.1:15001", 2*time.Second) })
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "through the tunnel"); err != nil {
			return "", err
		}
		_ = c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if got, err := echo(); err != nil || got != "through the tunnel" {
		t.Fatalf("echo through HBONE = %q, %v", got, err)
	}
	policies.Store(denyOf("cluster.local/ns/shop/sa/client"))
	if got, _ := echo(); got != "" {
		t.Errorf("with a DENY of the client's identity, echo = %q, want the connection closed", got)
	}
	policies.Store(empty)
	if got, err := echo(); err != nil || got != "through the tunnel" {
		t.Errorf("policy removed: echo = %q, %v", got, err)
	}
}
