package redirect

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// enterCgroup moves this whole process into cg (cgroup v2 membership is per process) and back
// when the benchmark ends, so that sockets it creates meanwhile run the cgroup hooks.
func enterCgroup(b *testing.B, cg string) {
	b.Helper()
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		b.Fatal(err)
	}
	var orig string
	for _, line := range strings.Split(strings.TrimSpace(string(self)), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			orig = p
		}
	}
	root, err := FindCgroup2()
	if err != nil || orig == "" {
		b.Fatalf("own cgroup v2: %q, %v", orig, err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), pid, 0); err != nil {
		b.Fatalf("enter cgroup: %v", err)
	}
	b.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(root, orig, "cgroup.procs"), pid, 0); err != nil {
			b.Errorf("leave cgroup: %v", err)
		}
	})
}

// connectLoop connects b.N sockets to dst from inside ns and resets each (SO_LINGER 0, so no
// TIME_WAIT exhausts the ports).
func connectLoop(b *testing.B, ns string, dst netip.AddrPort) {
	b.Helper()
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	inNS(b, ns, func() error {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			if err := unix.Connect(fd, sa); err != nil {
				unix.Close(fd)
				return fmt.Errorf("connect %d: %w", i, err)
			}
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
		}
		b.StopTimer()
		return nil
	})
}

func drain(s *server) {
	go func() {
		for c := range s.conns {
			c.Close()
		}
	}()
}

// BenchmarkConnect measures connect() to a listener in the pod netns: without hooks, with the
// hooks attached but the netns not enrolled (every other socket on a node), and captured.
// Compare ns/op of the sub-benchmarks of one run.
func BenchmarkConnect(b *testing.B) {
	e := newEnv(b)
	app := e.listen(e.podNS, netip.AddrPortFrom(e.podIP, 8080).String())
	proxy := e.proxyOutbound()
	drain(app)
	drain(proxy)
	direct := netip.AddrPortFrom(e.podIP, 8080)

	b.Run("no-hooks", func(b *testing.B) { connectLoop(b, e.podNS, direct) })
	enterCgroup(b, e.cgroup)
	b.Run("hooks-not-enrolled", func(b *testing.B) { connectLoop(b, e.podNS, direct) })
	e.enrol()
	b.Run("hooks-enrolled-pod-itself", func(b *testing.B) { connectLoop(b, e.podNS, direct) })
	// A remote destination, captured to the proxy's :15001 in the same netns.
	b.Run("hooks-captured", func(b *testing.B) { connectLoop(b, e.podNS, netip.AddrPortFrom(e.peerIP, 8080)) })
}

// BenchmarkOrigDstSteady runs 100,000 captured connections (the proxy consumes half the
// original destinations; all are closed) and reports the map sizes afterwards.
func BenchmarkOrigDstSteady(b *testing.B) {
	const n = 100_000
	e := newEnv(b)
	e.enrol()
	b.ResetTimer()
	runConnects(b, e, n)
	b.StopTimer()
	b.ReportMetric(float64(countEntries(e.r.objs.OrigByCookie)), "entries-by-cookie")
	b.ReportMetric(float64(countEntries(e.r.objs.OrigByPeer)), "entries-by-peer")
	b.ReportMetric(float64(n), "conns")
}
