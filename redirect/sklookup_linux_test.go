package redirect

import (
	"encoding/binary"
	"errors"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"net"
	"net/netip"
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
	progs := e.nsPrograms(netns)
	prog := progs.SkLookup
	other := e.nsPrograms(netns + 1000).SkLookup // a namespace that is not enrolled

	run := func(t *testing.T, p *ebpf.Program, ctx skLookupCtx) (uint32, uint64) {
		t.Helper()
		var out skLookupCtx
		ret, err := p.Run(&ebpf.RunOptions{Context: ctx, ContextOut: &out})
		if errors.Is(err, ebpf.ErrNotSupported) {
			testutil.SkipOrFail(t, "kernel lacks BPF_PROG_TEST_RUN for sk_lookup: "+err.Error())
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

func (e *env) nsPrograms(netns uint64) *nsPrograms {
	e.t.Helper()
	p, err := e.r.loadNSPrograms(netns)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { p.Close() })
	return p
}

// packet is a TCP segment in an Ethernet frame, as drop_syn sees it at tcx ingress.
type packet struct {
	from, to netip.AddrPort
	flags    uint8 // TCP flags
	proto    uint8 // IP protocol, TCP if 0
	ipOpts   int   // IPv4 option bytes (a multiple of 4)
	fragOff  uint16
	hopByHop bool // IPv6 with a hop-by-hop options header before TCP
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

func (p packet) bytes() []byte {
	be := binary.BigEndian
	proto := p.proto
	if proto == 0 {
		proto = unix.IPPROTO_TCP
	}
	tcp := make([]byte, 20)
	be.PutUint16(tcp[0:], p.from.Port())
	be.PutUint16(tcp[2:], p.to.Port())
	tcp[12] = 5 << 4
	tcp[13] = p.flags
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(eth[6:12], []byte{2, 0, 0, 0, 0, 2})
	var ip []byte
	if p.from.Addr().Is4() {
		be.PutUint16(eth[12:], unix.ETH_P_IP)
		ip = make([]byte, 20+p.ipOpts)
		ip[0] = 4<<4 | byte(len(ip)/4)
		be.PutUint16(ip[2:], uint16(len(ip)+len(tcp)))
		be.PutUint16(ip[6:], p.fragOff)
		ip[8] = 64
		ip[9] = proto
		f, t := p.from.Addr().As4(), p.to.Addr().As4()
		copy(ip[12:], f[:])
		copy(ip[16:], t[:])
		for i := 20; i < len(ip); i++ {
			ip[i] = 1 // NOP options
		}
	} else {
		be.PutUint16(eth[12:], unix.ETH_P_IPV6)
		ip = make([]byte, 40)
		ip[0] = 6 << 4
		ip[6] = proto
		ip[7] = 64
		f, t := p.from.Addr().As16(), p.to.Addr().As16()
		copy(ip[8:], f[:])
		copy(ip[24:], t[:])
		if p.hopByHop {
			ip[6] = 0
			ip = append(ip, proto, 0, 1, 4, 0, 0, 0, 0) // PadN
		}
		be.PutUint16(ip[4:], uint16(len(ip)-40+len(tcp)))
	}
	return append(append(eth, ip...), tcp...)
}

// TestDropSynDecisions runs drop_syn through BPF_PROG_TEST_RUN on crafted frames.
func TestDropSynDecisions(t *testing.T) {
	e := newEnv(t)
	netns := e.enrol()
	prog := e.nsPrograms(netns).DropSyn
	other := e.nsPrograms(netns + 1000).DropSyn // a namespace that is not enrolled

	const next, drop = ^uint32(0), 2 // TCX_NEXT (-1), TCX_DROP
	run := func(t *testing.T, p *ebpf.Program, pkt packet) uint32 {
		t.Helper()
		ret, err := p.Run(&ebpf.RunOptions{Data: pkt.bytes()})
		if errors.Is(err, ebpf.ErrNotSupported) {
			testutil.SkipOrFail(t, "kernel lacks BPF_PROG_TEST_RUN for tc: "+err.Error())
		}
		if err != nil {
			t.Fatalf("test run: %v", err)
		}
		return ret
	}
	node := netip.AddrPortFrom(e.peerIP, 40000)
	node6 := netip.AddrPortFrom(e.peerIP6, 40000)
	other4 := netip.AddrPortFrom(e.peerIP2, 40000)
	to := func(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }
	type tc struct {
		name string
		prog *ebpf.Program
		pkt  packet
		want uint32
	}
	check := func(cases []tc) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				if got := run(t, c.prog, c.pkt); got != c.want {
					t.Errorf("verdict %d, want %d", int32(got), int32(c.want))
				}
			})
		}
	}
	check([]tc{
		{"syn no listener drops", prog, packet{from: node, to: to(e.podIP, 8080), flags: tcpSYN}, drop},
		{"ipv6 syn no listener drops", prog, packet{from: node6, to: to(e.podIP6, 8080), flags: tcpSYN}, drop},
		{"hbone syn no listener drops", prog, packet{from: node, to: to(e.podIP, mesh.PortHBONE), flags: tcpSYN}, drop},
		{"probe port from elsewhere drops", prog, packet{from: other4, to: to(e.podIP, 8081), flags: tcpSYN}, drop},
		{"ipv4 options drops", prog, packet{from: node, to: to(e.podIP, 8080), flags: tcpSYN, ipOpts: 8}, drop},
		{"probe from node passes", prog, packet{from: node, to: to(e.podIP, 8081), flags: tcpSYN}, next},
		{"syn-ack passes", prog, packet{from: node, to: to(e.podIP, 8080), flags: tcpSYN | tcpACK}, next},
		{"ack passes", prog, packet{from: node, to: to(e.podIP, 8080), flags: tcpACK}, next},
		{"udp passes", prog, packet{from: node, to: to(e.podIP, 8080), flags: tcpSYN, proto: unix.IPPROTO_UDP}, next},
		{"not to the pod passes", prog, packet{from: node, to: to(e.peerIP2, 8080), flags: tcpSYN}, next},
		{"not enrolled passes", other, packet{from: node, to: to(e.podIP, 8080), flags: tcpSYN}, next},
		{"pod source passes", prog, packet{from: netip.AddrPortFrom(e.podIP, 4000), to: to(e.podIP, 8080), flags: tcpSYN}, next},
		{"loopback source passes", prog, packet{from: netip.MustParseAddrPort("127.0.0.1:4000"), to: to(e.podIP, 8080), flags: tcpSYN}, next},
		{"later fragment passes", prog, packet{from: node, to: to(e.podIP, 8080), flags: tcpSYN, fragOff: 8}, next},
		// Not parsed: left to sk_lookup, which refuses with a RST.
		{"ipv6 extension header passes", prog, packet{from: node6, to: to(e.podIP6, 8080), flags: tcpSYN, hopByHop: true}, next},
	})

	in := e.listen(e.podNS, ":15006")
	hb := e.listen(e.podNS, ":15008")
	if err := e.r.RegisterListener(netns, ListenerInbound, in.ln.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	check([]tc{
		{"syn with listener passes", prog, packet{from: node, to: to(e.podIP, 8080), flags: tcpSYN}, next},
		{"ipv6 syn with listener passes", prog, packet{from: node6, to: to(e.podIP6, 8080), flags: tcpSYN}, next},
		{"hbone syn without its listener drops", prog, packet{from: node, to: to(e.podIP, mesh.PortHBONE), flags: tcpSYN}, drop},
	})
	if err := e.r.RegisterListener(netns, ListenerHBONE, hb.ln.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	check([]tc{
		{"hbone syn with listener passes", prog, packet{from: node, to: to(e.podIP, mesh.PortHBONE), flags: tcpSYN}, next},
	})
}
