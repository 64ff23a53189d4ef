package redirect

import (
	"fmt"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ownCgroup returns the path of this process's cgroup v2.
func ownCgroup(b *testing.B) string {
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
	return filepath.Join(root, orig)
}

// moveTo moves this whole process into cgroup cg (cgroup v2 membership is per process).
func moveTo(cg string) error {
	return os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
}

// enterCgroup moves this whole process into cg and back when the benchmark ends, so that
// sockets it creates meanwhile run the cgroup hooks.
func enterCgroup(b *testing.B, cg string) {
	b.Helper()
	orig := ownCgroup(b)
	if err := moveTo(cg); err != nil {
		b.Fatalf("enter cgroup: %v", err)
	}
	b.Cleanup(func() {
		if err := moveTo(orig); err != nil {
			b.Errorf("leave cgroup: %v", err)
		}
	})
}

// connectLoop connects b.N sockets to dst from inside ns and resets each (SO_LINGER 0, so no
// TIME_WAIT exhausts the ports).
func connectLoop(b *testing.B, ns string, dst netip.AddrPort) {
	b.Helper()
	inNS(b, ns, func() error {
		b.ResetTimer()
		err := connectN(dst, b.N)
		b.StopTimer()
		return err
	})
}

// connectN connects n sockets to dst from the calling thread and resets each.
func connectN(dst netip.AddrPort, n int) error {
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	for i := 0; i < n; i++ {
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
	return nil
}

func drain(s *server) {
	go func() {
		for c := range s.conns {
			c.Close()
		}
	}()
}

// connectEnv is a pod with an app listening on :8080 and a proxy on :15001, both accepting and
// closing whatever arrives, for the connect() benchmarks.
func connectEnv(b *testing.B) *env {
	e := newEnv(b)
	drain(e.listen(e.podNS, netip.AddrPortFrom(e.podIP, 8080).String()))
	drain(e.proxyOutbound())
	return e
}

// BenchmarkConnect measures connect() to a listener in the pod netns: without hooks, with the
// hooks attached but the netns not enrolled (every other socket on a node), and captured.
// Compare ns/op of the sub-benchmarks of one run.
func BenchmarkConnect(b *testing.B) {
	e := connectEnv(b)
	direct := netip.AddrPortFrom(e.podIP, 8080)

	b.Run("no-hooks", func(b *testing.B) { connectLoop(b, e.podNS, direct) })
	enterCgroup(b, e.cgroup)
	b.Run("hooks-not-enrolled", func(b *testing.B) { connectLoop(b, e.podNS, direct) })
	e.enrol()
	b.Run("hooks-enrolled-pod-itself", func(b *testing.B) { connectLoop(b, e.podNS, direct) })
	// A remote destination, captured to the proxy's :15001 in the same netns.
	b.Run("hooks-captured", func(b *testing.B) { connectLoop(b, e.podNS, netip.AddrPortFrom(e.peerIP, 8080)) })
}

// BenchmarkConnectOverhead measures what capture adds to connect(), robustly on a busy machine:
// batches of connects without hooks (the process outside the hooked cgroup, straight to the app
// in the pod) and captured (inside it, the pod enrolled, to a remote address that connect4
// rewrites to the proxy's :15001 in the pod) alternate, so that load that comes and goes weighs on
// both alike. It reports both per-connect times and their difference (the target: under
// 2 µs); ns/op is the time of one pair.
func BenchmarkConnectOverhead(b *testing.B) {
	e := connectEnv(b)
	e.enrol()
	orig := ownCgroup(b)
	b.Cleanup(func() {
		if err := moveTo(orig); err != nil {
			b.Errorf("leave cgroup: %v", err)
		}
	})
	direct, remote := netip.AddrPortFrom(e.podIP, 8080), netip.AddrPortFrom(e.peerIP, 8080)
	const batch = 500
	var plain, captured time.Duration
	inNS(b, e.podNS, func() error {
		b.ResetTimer()
		legs := []struct {
			cgroup string
			dst    netip.AddrPort
			total  *time.Duration
		}{{orig, direct, &plain}, {e.cgroup, remote, &captured}}
		for done := 0; done < b.N; done += batch {
			n := min(batch, b.N-done)
			for _, leg := range legs {
				b.StopTimer()
				if err := moveTo(leg.cgroup); err != nil {
					return err
				}
				b.StartTimer()
				start := time.Now()
				if err := connectN(leg.dst, n); err != nil {
					return err
				}
				*leg.total += time.Since(start)
			}
		}
		b.StopTimer()
		return nil
	})
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) }
	b.ReportMetric(per(plain), "no-hooks-ns/connect")
	b.ReportMetric(per(captured), "captured-ns/connect")
	b.ReportMetric(per(captured-plain), "overhead-ns/connect")
}

// BenchmarkHookRuntime reports the time the kernel spends in the connect4 and sockops programs
// per connect() (ns/op of the programs, from the kernel's BPF run-time statistics), which the
// scheduling noise of a shared machine does not blur as it blurs BenchmarkConnect. Statistics
// are on for the benchmark only (BPF_ENABLE_STATS, off again when its fd closes); they add a
// clock read or two per program run to the figures.
func BenchmarkHookRuntime(b *testing.B) {
	e := connectEnv(b)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		testutil.SkipOrFail(b, "kernel lacks BPF_ENABLE_STATS: "+err.Error())
	}
	defer stats.Close()
	progs := []struct {
		name string
		prog *ebpf.Program
	}{{"connect4", e.r.objs.Connect4}, {"sockops", e.r.objs.TrackSockops}}
	measure := func(b *testing.B, dst netip.AddrPort) {
		before := make([]*ebpf.ProgramStats, len(progs))
		for i, p := range progs {
			if before[i], err = p.prog.Stats(); err != nil {
				b.Fatal(err)
			}
		}
		connectLoop(b, e.podNS, dst)
		var total time.Duration
		for i, p := range progs {
			after, err := p.prog.Stats()
			if err != nil {
				b.Fatal(err)
			}
			d := after.Runtime - before[i].Runtime
			total += d
			b.ReportMetric(float64(d.Nanoseconds())/float64(b.N), p.name+"-ns/op")
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "hooks-ns/op")
	}
	enterCgroup(b, e.cgroup)
	b.Run("not-enrolled", func(b *testing.B) { measure(b, netip.AddrPortFrom(e.podIP, 8080)) })
	e.enrol()
	b.Run("captured", func(b *testing.B) { measure(b, netip.AddrPortFrom(e.peerIP, 8080)) })
	// An app container as deep as on a Kubernetes node (kubepods.slice/<qos>.slice/<pod>.slice/
	// <container>.scope: level 4), with a proxy cgroup registered elsewhere: connect4 looks up
	// each of the four levels in proxy_cgroups.
	proxy, err := CgroupID(e.subCgroup(b, "proxy"))
	if err != nil {
		b.Fatal(err)
	}
	if err := e.r.AllowProxyCgroup(proxy); err != nil {
		b.Fatal(err)
	}
	enterCgroup(b, e.subCgroup(b, "qos/pod/container"))
	b.Run("captured-level4", func(b *testing.B) { measure(b, netip.AddrPortFrom(e.peerIP, 8080)) })
}

// BenchmarkDropSyn reports drop_syn's cost per packet (BPF_PROG_TEST_RUN): a segment of an
// established connection, the common case, and a SYN with the proxy listening.
func BenchmarkDropSyn(b *testing.B) {
	e := newEnv(b)
	netns := e.enrol()
	in := e.listen(e.podNS, ":15006")
	if err := e.r.RegisterListener(netns, ListenerInbound, in.ln.(*net.TCPListener)); err != nil {
		b.Fatal(err)
	}
	prog := e.nsPrograms(netns).DropSyn
	from, to := netip.AddrPortFrom(e.peerIP, 40000), netip.AddrPortFrom(e.podIP, 8080)
	for _, bc := range []struct {
		name  string
		flags uint8
	}{{"ack", tcpACK}, {"syn-listening", tcpSYN}} {
		b.Run(bc.name, func(b *testing.B) {
			pkt := packet{from: from, to: to, flags: bc.flags}.bytes()
			_, d, err := prog.Benchmark(pkt, b.N, b.ResetTimer)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(d.Nanoseconds()), "prog-ns/op")
		})
	}
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
