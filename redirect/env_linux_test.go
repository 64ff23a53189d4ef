package redirect

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// requireKernel skips (or fails, see testutil.SkipOrFail) unless the test can use eBPF, cgroup v2,
// network namespaces and bpffs.
func requireKernel(t testing.TB) {
	t.Helper()
	var reason string
	switch {
	case os.Geteuid() != 0:
		reason = "needs root"
	case !fileExists("/sys/kernel/btf/vmlinux"):
		reason = "needs kernel BTF"
	default:
		if _, err := exec.LookPath("ip"); err != nil {
			reason = "needs ip from iproute2"
		}
	}
	if reason == "" {
		if _, err := FindCgroup2(); err != nil {
			reason = "needs a cgroup v2 hierarchy: " + err.Error()
		}
	}
	if reason != "" {
		testutil.SkipOrFail(t, reason)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

var (
	envSeq    atomic.Uint32
	sweepOnce sync.Once
)

// sweepStale removes what earlier test processes that were killed before their cleanup (a
// timeout, a signal) left behind: only names with this package's prefix and a pid that no
// longer runs.
func sweepStale() {
	dead := func(name string) bool {
		rest, ok := strings.CutPrefix(name, "ambrd")
		if !ok {
			return false
		}
		pid, _, _ := strings.Cut(rest, "-")
		if _, err := strconv.Atoi(pid); err != nil || pid == strconv.Itoa(os.Getpid()) {
			return false
		}
		return !fileExists("/proc/" + pid)
	}
	mounts, _ := filepath.Glob(filepath.Join(os.TempDir(), "ambrd*-bpffs*"))
	for _, m := range mounts {
		if dead(filepath.Base(m)) {
			_ = unix.Unmount(m, unix.MNT_DETACH)
			_ = os.Remove(m)
		}
	}
	nss, _ := os.ReadDir("/run/netns")
	for _, ns := range nss {
		if dead(ns.Name()) {
			_ = exec.Command("ip", "netns", "del", ns.Name()).Run()
		}
	}
	if root, err := FindCgroup2(); err == nil {
		cgs, _ := filepath.Glob(filepath.Join(root, "ambrd*"))
		for _, cg := range cgs {
			if dead(filepath.Base(cg)) {
				_ = unix.Rmdir(cg)
			}
		}
	}
}

// env is one test's world: a pod netns and a peer netns joined by a veth pair, a cgroup for
// the application, a pin dir, and the loaded Redirector. Everything goes away in t.Cleanup.
type env struct {
	t       testing.TB
	name    string
	podNS   string // path under /run/netns
	peerNS  string
	cgroup  string
	cfg     Config
	r       *Redirector
	podIP   netip.Addr
	peerIP  netip.Addr
	peerIP2 netip.Addr // a second peer address that is not a probe source
	podIP6  netip.Addr
	peerIP6 netip.Addr
}

func newEnv(t testing.TB) *env {
	t.Helper()
	requireKernel(t)
	sweepOnce.Do(sweepStale)
	n := envSeq.Add(1)
	// /24 per env, in 10.251/16: only inside the test's own namespaces.
	subnet := int(os.Getpid()+int(n)) % 250
	e := &env{
		t:       t,
		name:    fmt.Sprintf("ambrd%d-%d", os.Getpid(), n),
		podIP:   netip.MustParseAddr(fmt.Sprintf("10.251.%d.1", subnet)),
		peerIP:  netip.MustParseAddr(fmt.Sprintf("10.251.%d.2", subnet)),
		peerIP2: netip.MustParseAddr(fmt.Sprintf("10.251.%d.3", subnet)),
		podIP6:  netip.MustParseAddr(fmt.Sprintf("fd00:251:%x::1", subnet)),
		peerIP6: netip.MustParseAddr(fmt.Sprintf("fd00:251:%x::2", subnet)),
	}
	e.podNS = "/run/netns/" + e.name + "p"
	e.peerNS = "/run/netns/" + e.name + "q"

	cg2, err := FindCgroup2()
	if err != nil {
		t.Fatal(err)
	}
	e.cgroup = filepath.Join(cg2, e.name)
	if err := os.Mkdir(e.cgroup, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := testutil.Poll(5*time.Second, func() bool { return unix.Rmdir(e.cgroup) == nil || !fileExists(e.cgroup) }); err != nil {
			t.Errorf("remove cgroup %s: %v", e.cgroup, err)
		}
	})

	pod, peer := e.name+"p", e.name+"q"
	for _, ns := range []string{pod, peer} {
		e.ip("netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	// veth created inside the pod netns, so no interface ever appears in the host's.
	e.ip("-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer)
	e.ip("-n", pod, "link", "set", "lo", "up")
	e.ip("-n", peer, "link", "set", "lo", "up")
	e.ip("-n", pod, "addr", "add", e.podIP.String()+"/24", "dev", "eth0")
	e.ip("-n", peer, "addr", "add", e.peerIP.String()+"/24", "dev", "eth0")
	e.ip("-n", peer, "addr", "add", e.peerIP2.String()+"/24", "dev", "eth0")
	e.ip("-n", pod, "addr", "add", e.podIP6.String()+"/64", "dev", "eth0", "nodad")
	e.ip("-n", peer, "addr", "add", e.peerIP6.String()+"/64", "dev", "eth0", "nodad")
	e.ip("-n", pod, "link", "set", "eth0", "up")
	e.ip("-n", peer, "link", "set", "eth0", "up")

	// A bpffs instance of the test's own, not the host's /sys/fs/bpf.
	bpffs, err := os.MkdirTemp("", e.name+"-bpffs")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(bpffs)
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(bpffs, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
		os.Remove(bpffs)
	})
	e.cfg = Config{PinDir: filepath.Join(bpffs, "ambient"), Cgroup: e.cgroup}
	t.Cleanup(func() {
		if err := Uninstall(e.cfg); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	r, err := Load(e.cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	e.r = r
	return e
}

func (e *env) ip(args ...string) {
	e.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		e.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (e *env) cookie(ns string) uint64 {
	e.t.Helper()
	c, err := NetNSCookie(ns)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// enrol enrols the pod netns with both addresses; probe port 8081 from peerIP.
func (e *env) enrol() uint64 {
	e.t.Helper()
	c := e.cookie(e.podNS)
	err := e.r.Enrol(Pod{
		NetNS:        c,
		IPs:          []netip.Addr{e.podIP, e.podIP6},
		ProbePorts:   []uint16{8081},
		ProbeSources: []netip.Addr{e.peerIP},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// inNS runs fn on a thread inside the netns at path.
func inNS(t testing.TB, path string, fn func() error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := inNetNS(int(f.Fd()), fn); err != nil {
		t.Fatal(err)
	}
}

// server is a listener inside a netns whose accepted connections arrive on a channel.
type server struct {
	ln    net.Listener
	conns chan net.Conn
}

func (e *env) listen(ns, addr string) *server {
	e.t.Helper()
	s := &server{conns: make(chan net.Conn, 64)}
	inNS(e.t, ns, func() (err error) {
		// Plain TCP: Go listens with MPTCP by default where the kernel has it, and MPTCP
		// sockets cannot go into a SOCKHASH.
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		s.ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	e.t.Cleanup(func() { s.ln.Close() })
	go func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				close(s.conns)
				return
			}
			s.conns <- c
		}
	}()
	return s
}

// accept waits for one connection.
func (s *server) accept(t testing.TB, timeout time.Duration) net.Conn {
	t.Helper()
	select {
	case c, ok := <-s.conns:
		if !ok {
			t.Fatalf("listener %v closed", s.ln.Addr())
		}
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(timeout):
		t.Fatalf("no connection on %v within %v", s.ln.Addr(), timeout)
		return nil
	}
}

// none checks that no connection arrived.
func (s *server) none(t testing.TB) {
	t.Helper()
	select {
	case c, ok := <-s.conns:
		if ok {
			t.Errorf("unexpected connection on %v from %v", s.ln.Addr(), c.RemoteAddr())
			c.Close()
		}
	default:
	}
}

// dialFrom dials addr from a thread inside ns (not in the test cgroup: no connect hooks).
func dialFrom(t testing.TB, ns string, local netip.Addr, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var derr error
	inNS(t, ns, func() error {
		d := net.Dialer{Timeout: timeout}
		if local.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
		}
		c, derr = d.Dial("tcp", addr.String())
		return nil
	})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, derr
}

// appResult is what the helper process reports about its connection.
type appResult struct {
	Local string // local address after connect
	Peer  string // getpeername
	Err   string
}

// app runs the helper process as the pod's application: inside the pod netns and the test
// cgroup, so the connect hooks see it. It dials network/addr (with SO_MARK mark if not 0),
// then waits for the server to close the connection.
func (e *env) app(ctx context.Context, network, addr string, mark int) (*exec.Cmd, <-chan appResult) {
	e.t.Helper()
	return e.helper(ctx, true, "dial", network, addr, fmt.Sprint(mark))
}

// appIn is app in another cgroup (one below the test cgroup, so the hooks still see it).
func (e *env) appIn(ctx context.Context, cgroup, network, addr string, mark int) (*exec.Cmd, <-chan appResult) {
	e.t.Helper()
	return e.helperIn(ctx, cgroup, true, "dial", network, addr, fmt.Sprint(mark))
}

// subCgroup creates the cgroup e.cgroup/rel (and its parents), removed in t.Cleanup.
func (e *env) subCgroup(t testing.TB, rel string) string {
	t.Helper()
	dir := e.cgroup
	for c := range strings.SplitSeq(rel, "/") {
		dir = filepath.Join(dir, c)
		if fileExists(dir) {
			continue
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatalf("create cgroup: %v", err)
		}
		made := dir
		t.Cleanup(func() {
			// A helper that just exited may still be leaving it.
			if err := testutil.Poll(5*time.Second, func() bool { return unix.Rmdir(made) == nil || !fileExists(made) }); err != nil {
				t.Errorf("remove cgroup %s: %v", made, err)
			}
		})
	}
	return dir
}

// helper runs the test binary as a helper process in the test cgroup, and in the pod netns
// if inPod.
func (e *env) helper(ctx context.Context, inPod bool, args ...string) (*exec.Cmd, <-chan appResult) {
	e.t.Helper()
	return e.helperIn(ctx, e.cgroup, inPod, args...)
}

// helperIn is helper in the given cgroup.
func (e *env) helperIn(ctx context.Context, cgroup string, inPod bool, args ...string) (*exec.Cmd, <-chan appResult) {
	e.t.Helper()
	cg, err := os.Open(cgroup)
	if err != nil {
		e.t.Fatal(err)
	}
	defer cg.Close()
	argv := append([]string{os.Args[0], "-test.run=^TestHelperProcess$", "--"}, args...)
	if inPod {
		argv = append([]string{"ip", "netns", "exec", filepath.Base(e.podNS)}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "AMBIENT_REDIRECT_HELPER=1", "AMBIENT_REDIRECT_PIN_DIR="+e.cfg.PinDir, "AMBIENT_REDIRECT_CGROUP="+e.cgroup)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start helper: %v", err)
	}
	res := make(chan appResult, 1)
	go func() {
		var r appResult
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "RESULT "); ok {
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					r.Err = err.Error()
				}
			}
		}
		if err := cmd.Wait(); err != nil && r.Err == "" {
			r.Err = "helper: " + err.Error()
		}
		res <- r
	}()
	return cmd, res
}

func waitResult(t testing.TB, res <-chan appResult) appResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("helper did not finish")
		return appResult{}
	}
}

// TestHelperProcess is the application side of the tests, run in a child process.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("AMBIENT_REDIRECT_HELPER") != "1" {
		return // only a helper process runs this
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	var r appResult
	if err := helperMain(args, &r); err != nil {
		r.Err = err.Error()
	}
	b, _ := json.Marshal(r)
	fmt.Printf("RESULT %s\n", b)
	os.Exit(0)
}

func helperMain(args []string, r *appResult) error {
	switch args[0] {
	case "dial":
		var mark int
		fmt.Sscan(args[3], &mark)
		d := net.Dialer{Timeout: 3 * time.Second}
		if mark != 0 {
			d.Control = func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) })
				return errors.Join(err, serr)
			}
		}
		var c net.Conn
		var err error
		switch args[1] {
		case "tcp6-dual":
			c, err = dialDualStack(args[2])
		case "mptcp":
			d.SetMultipathTCP(true)
			c, err = d.Dial("tcp", args[2])
		default:
			c, err = d.Dial(args[1], args[2])
		}
		if err != nil {
			return err
		}
		defer c.Close()
		r.Local = c.LocalAddr().String()
		raw, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			return err
		}
		var sa unix.Sockaddr
		var serr error
		if err := raw.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
		r.Peer = sockaddrString(sa)
		// Report before waiting, so the test can check while the connection is open.
		b, _ := json.Marshal(r)
		fmt.Printf("RESULT %s\n", b)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Read(make([]byte, 1))
		return nil
	case "load":
		cfg := Config{PinDir: os.Getenv("AMBIENT_REDIRECT_PIN_DIR"), Cgroup: os.Getenv("AMBIENT_REDIRECT_CGROUP")}
		r, err := Load(cfg)
		if err != nil {
			return err
		}
		return r.Close()
	case "connects":
		// Many short connections; the server closes each.
		var n int
		fmt.Sscan(args[2], &n)
		for i := 0; i < n; i++ {
			c, err := net.DialTimeout("tcp", args[1], 3*time.Second)
			if errors.Is(err, syscall.ECONNRESET) {
				continue // the proxy accepted and reset it before connect returned
			}
			if err != nil {
				return fmt.Errorf("connect %d: %w", i, err)
			}
			// Wait for the proxy to close first, as a real client waits for its answer.
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, _ = c.Read(make([]byte, 1))
			c.Close()
		}
		return nil
	}
	return fmt.Errorf("unknown helper mode %q", args[0])
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)).String()
	}
	return fmt.Sprint(sa)
}

// dialDualStack connects an AF_INET6 socket without IPV6_V6ONLY, which net.Dial never does,
// so that an IPv4-mapped destination goes through connect6 as such.
func dialDualStack(addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "dual")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}); err != nil {
		return nil, err
	}
	return net.FileConn(f)
}
