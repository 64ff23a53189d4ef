package redirect

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// skLookupCtx is struct bpf_sk_lookup as BPF_PROG_TEST_RUN takes it.
type skLookupCtx struct {
	Cookie         uint64
	Family         uint32
	Protocol       uint32
	RemoteIP4      uint32
	RemoteIP6      [4]uint32
	RemotePort     uint16 // network byte order
	_              uint16
	LocalIP4       uint32
	LocalIP6       [4]uint32
	LocalPort      uint32 // host byte order
	IngressIfindex uint32 // must be 0 for BPF_PROG_TEST_RUN
	_              uint32
}

func newSKLookupCtx(proto uint32, from, to netip.AddrPort) skLookupCtx {
	var be [2]byte
	binary.BigEndian.PutUint16(be[:], from.Port())
	c := skLookupCtx{Protocol: proto, RemotePort: binary.NativeEndian.Uint16(be[:]), LocalPort: uint32(to.Port())}
	if from.Addr().Is4() {
		c.Family = unix.AF_INET
		f, t := from.Addr().As4(), to.Addr().As4()
		c.RemoteIP4, c.LocalIP4 = binary.NativeEndian.Uint32(f[:]), binary.NativeEndian.Uint32(t[:])
	} else {
		c.Family = unix.AF_INET6
		c.RemoteIP6, c.LocalIP6 = ip16(from.Addr()), ip16(to.Addr())
	}
	return c
}

func socketCookie(t *testing.T, s *server) uint64 {
	t.Helper()
	raw, err := s.ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var c uint64
	var serr error
	if err := raw.Control(func(fd uintptr) { c, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return c
}

// TestSKLookupDecisions runs the sk_lookup program through BPF_PROG_TEST_RUN, without
// attaching it or sending packets.
func TestSKLookupDecisions(t *testing.T) {
	e := newEnv(t)
	netns := e.enrol()
	prog, err := e.r.skLookupProgram(netns)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	other, err := e.r.skLookupProgram(netns + 1000) // a namespace that is not enrolled
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	run := func(t *testing.T, p *ebpf.Program, ctx skLookupCtx) (uint32, uint64) {
		t.Helper()
		var out skLookupCtx
		ret, err := p.Run(&ebpf.RunOptions{Context: ctx, ContextOut: &out})
		if errors.Is(err, ebpf.ErrNotSupported) {
			skipOrFail(t, "kernel lacks BPF_PROG_TEST_RUN for sk_lookup: "+err.Error())
		}
		if err != nil {
			t.Fatalf("test run: %v", err)
		}
		return ret, out.Cookie
	}
	const pass, drop = 1, 0
	node := netip.AddrPortFrom(e.peerIP, 40000)
	node6 := netip.AddrPortFrom(e.peerIP6, 40000)
	other4 := netip.AddrPortFrom(e.peerIP2, 40000)
	to := func(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

	type tc struct {
		name   string
		prog   *ebpf.Program
		ctx    skLookupCtx
		want   uint32
		cookie func() uint64
	}
	none := func() uint64 { return 0 }
	noListeners := []tc{
		{"udp passes", prog, newSKLookupCtx(unix.IPPROTO_UDP, node, to(e.podIP, 53)), pass, none},
		{"not enrolled passes", other, newSKLookupCtx(unix.IPPROTO_TCP, node, to(e.podIP, 8080)), pass, none},
		{"loopback source passes", prog, newSKLookupCtx(unix.IPPROTO_TCP, netip.MustParseAddrPort("127.0.0.1:4000"), to(netip.MustParseAddr("127.0.0.1"), 8080)), pass, none},
		{"pod source passes", prog, newSKLookupCtx(unix.IPPROTO_TCP, netip.AddrPortFrom(e.podIP, 4000), to(e.podIP, 8080)), pass, none},
		{"pod ipv6 source passes", prog, newSKLookupCtx(unix.IPPROTO_TCP, netip.AddrPortFrom(e.podIP6, 4000), to(e.podIP6, 8080)), pass, none},
		{"probe from node passes", prog, newSKLookupCtx(unix.IPPROTO_TCP, node, to(e.podIP, 8081)), pass, none},
		{"no listener drops", prog, newSKLookupCtx(unix.IPPROTO_TCP, node, to(e.podIP, 8080)), drop, none},
		{"no hbone listener drops", prog, newSKLookupCtx(unix.IPPROTO_TCP, node, to(e.podIP, mesh.PortHBONE)), drop, none},
		{"probe port from elsewhere drops", prog, newSKLookupCtx(unix.IPPROTO_TCP, other4, to(e.podIP, 8081)), drop, none},
		{"ipv6 no listener drops", prog, newSKLookupCtx(unix.IPPROTO_TCP, node6, to(e.podIP6, 8080)), drop, none},
	}
	for _, c := range noListeners {
		t.Run(c.name, func(t *testing.T) {
			if ret, cookie := run(t, c.prog, c.ctx); ret != c.want || cookie != c.cookie() {
				t.Errorf("verdict %d, socket cookie %d; want %d, %d", ret, cookie, c.want, c.cookie())
			}
		})
	}

	bh, err := e.r.Blackhole(e.podNS)
	if err != nil {
		t.Fatal(err)
	}
	defer bh.Close()
	bhCookie, err := unix.GetsockoptUint64(int(bh.(*os.File).Fd()), unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("no listener goes to blackhole", func(t *testing.T) {
		ret, cookie := run(t, prog, newSKLookupCtx(unix.IPPROTO_TCP, node, to(e.podIP, 8080)))
		if ret != pass || cookie != bhCookie {
			t.Errorf("verdict %d, socket cookie %d; want %d, %d (blackhole)", ret, cookie, pass, bhCookie)
		}
	})

	in := e.listen(e.podNS, ":15006")
	hb := e.listen(e.podNS, ":15008")
	if err := e.r.RegisterListener(netns, ListenerInbound, in.ln.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	if err := e.r.RegisterListener(netns, ListenerHBONE, hb.ln.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	inCookie := func() uint64 { return socketCookie(t, in) }
	hbCookie := func() uint64 { return socketCookie(t, hb) }
	withListeners := []tc{
		{"inbound to proxy", prog, newSKLookupCtx(unix.IPPROTO_TCP, node, to(e.podIP, 8080)), pass, inCookie},
		{"inbound ipv6 to proxy", prog, newSKLookupCtx(unix.IPPROTO_TCP, node6, to(e.podIP6, 8080)), pass, inCookie},
		{"hbone to hbone listener", prog, newSKLookupCtx(unix.IPPROTO_TCP, node, to(e.podIP, mesh.PortHBONE)), pass, hbCookie},
		{"probe port from elsewhere to proxy", prog, newSKLookupCtx(unix.IPPROTO_TCP, other4, to(e.podIP, 8081)), pass, inCookie},
		{"probe from node still passes", prog, newSKLookupCtx(unix.IPPROTO_TCP, node, to(e.podIP, 8081)), pass, none},
	}
	for _, c := range withListeners {
		t.Run(c.name, func(t *testing.T) {
			if ret, cookie := run(t, c.prog, c.ctx); ret != c.want || cookie != c.cookie() {
				t.Errorf("verdict %d, socket cookie %d; want %d, %d", ret, cookie, c.want, c.cookie())
			}
		})
	}
}
