package inpod

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/redirect"
)

// netns creates a throwaway network namespace with loopback up and returns an open fd of it.
func netns(t *testing.T) *os.File {
	t.Helper()
	testutil.RequireRoot(t)
	name := fmt.Sprintf("inpod-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		testutil.SkipOrFail(t, fmt.Sprintf("ip netns add: %v: %s", err, out))
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

type registrar struct {
	mu   sync.Mutex
	got  []string
	fail error
}

func (r *registrar) RegisterListener(netns uint64, kind redirect.ListenerKind, _ syscall.Conn) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, fmt.Sprintf("%d %s", netns, kind))
	return r.fail
}

// lineHandler answers each connection with the listener's name and the pod.
type lineHandler struct{ hold chan struct{} }

func (h lineHandler) serve(kind string, p *Pod, c net.Conn) {
	defer c.Close()
	fmt.Fprintf(c, "%s %s\n", kind, p.Key())
	if h.hold != nil {
		<-h.hold
	}
}
func (h lineHandler) Outbound(_ context.Context, p *Pod, c net.Conn) { h.serve("outbound", p, c) }
func (h lineHandler) Inbound(_ context.Context, p *Pod, c net.Conn)  { h.serve("inbound", p, c) }
func (h lineHandler) HBONE(_ context.Context, p *Pod, c net.Conn)    { h.serve("hbone", p, c) }

func dialLine(t *testing.T, p *Pod, port uint16) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(bytes.TrimSpace(b)), err
}

func TestListenersInPod(t *testing.T) {
	ns := netns(t)
	defer ns.Close()
	reg := &registrar{}
	m := New(Config{Registrar: reg, Handler: lineHandler{}, Drain: time.Second})
	defer m.Close()
	dup := func() *os.File {
		fd, err := syscall.Dup(int(ns.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(fd), "netns")
	}
	w := &zdsv1.WorkloadInfo{Uid: "u1", Name: "web", Namespace: "shop", Ips: []string{"10.1.0.5"}}
	if err := m.AddWorkload(context.Background(), w, 42, dup()); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(reg.got); got != "[42 inbound 42 hbone]" {
		t.Errorf("registered %s, want the inbound and HBONE listeners of netns 42", got)
	}
	pods := m.Pods()
	if len(pods) != 1 || pods[0].IPs[0] != netip.MustParseAddr("10.1.0.5") {
		t.Fatalf("pods = %+v", pods)
	}
	p := pods[0]
	for port, want := range map[uint16]string{15001: "outbound shop/web", 15006: "inbound shop/web", 15008: "hbone shop/web"} {
		if got, err := dialLine(t, p, port); err != nil || got != want {
			t.Errorf("port %d: %q, %v; want %q", port, got, err, want)
		}
	}
	// The host's namespace has no such listener: the sockets live in the pod.
	if c, err := net.DialTimeout("tcp", "127.0.0.1:15001", time.Second); err == nil {
		c.Close()
		t.Error("a listener is reachable from the host's namespace")
	}
	// A re-add of the same namespace keeps the listeners; a second ztunnel could bind beside.
	if err := m.AddWorkload(context.Background(), w, 42, dup()); err != nil {
		t.Fatal(err)
	}
	if len(reg.got) != 2 {
		t.Errorf("re-add registered again: %v", reg.got)
	}
	if err := m.KeepWorkload("u1"); err != nil {
		t.Error(err)
	}
	if err := m.KeepWorkload("nope"); err == nil {
		t.Error("KeepWorkload of an unknown pod succeeded")
	}
	// Removed by the snapshot: listeners close.
	m.SnapshotDone(map[string]bool{})
	if len(m.Pods()) != 0 {
		t.Error("a pod not in the snapshot is still served")
	}
	testutil.Eventually(t, 5*time.Second, "listeners closed", func() bool {
		_, err := dialLine(t, p, 15001)
		return err != nil
	})
}

func TestDrainOnDelete(t *testing.T) {
	ns := netns(t)
	defer ns.Close()
	hold := make(chan struct{})
	m := New(Config{Handler: lineHandler{hold: hold}, Drain: time.Hour})
	defer m.Close()
	if err := m.AddWorkload(context.Background(), &zdsv1.WorkloadInfo{Uid: "u1", Name: "web", Namespace: "shop"}, 7, ns); err != nil {
		t.Fatal(err)
	}
	p := m.Pods()[0]
	c, err := p.Dial(context.Background(), netip.MustParseAddrPort("127.0.0.1:15006"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line := make([]byte, 64)
	n, err := c.Read(line)
	if err != nil || string(line[:n]) != "inbound shop/web\n" {
		t.Fatalf("read %q, %v", line[:n], err)
	}
	select {
	case <-p.Draining():
		t.Fatal("Draining closed while the pod is served")
	default:
	}
	if err := m.DelWorkload("u1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Draining():
	default:
		t.Error("Draining not closed once DelWorkload returned")
	}
	testutil.Eventually(t, 5*time.Second, "no new connections after DelWorkload", func() bool {
		_, err := dialLine(t, p, 15006)
		return err != nil
	})
	// The open connection is still being served (drain), until its handler ends.
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(line); err == nil || !os.IsTimeout(err) {
		t.Errorf("open connection ended during the drain: %v", err)
	}
	close(hold)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(line); err != io.EOF {
		t.Errorf("after its handler ended, read = %v, want EOF", err)
	}
}

func TestRegistrarRefusal(t *testing.T) {
	ns := netns(t)
	m := New(Config{Registrar: &registrar{fail: fmt.Errorf("MPTCP socket")}, Handler: lineHandler{}})
	defer m.Close()
	if err := m.AddWorkload(context.Background(), &zdsv1.WorkloadInfo{Uid: "u1", Name: "web", Namespace: "shop"}, 7, ns); err == nil {
		t.Fatal("AddWorkload succeeded although the listeners could not be registered")
	}
	if len(m.Pods()) != 0 {
		t.Error("a pod whose listeners were refused is served")
	}
}
