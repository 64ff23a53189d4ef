package redirect

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

func TestAddrKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"10.1.2.3:80", "[::ffff:10.1.2.3]:80", "[fd00::1]:15001", "0.0.0.0:0"} {
		ap := netip.MustParseAddrPort(s)
		got := addrKey(ap).addrPort()
		want := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if got != want {
			t.Errorf("%s: round trip = %v, want %v", s, got, want)
		}
	}
}

// TestIP16Layout pins the byte layout the C programs compare against: network byte order in
// memory, IPv4 as ::ffff:a.b.c.d.
func TestIP16Layout(t *testing.T) {
	w := ip16(netip.MustParseAddr("10.1.2.3"))
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	want := [16]byte{10: 0xff, 11: 0xff, 12: 10, 13: 1, 14: 2, 15: 3}
	if b != want {
		t.Errorf("ip16 bytes = %v, want %v", b, want)
	}
}

func TestPodValue(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")
	for _, tc := range []struct {
		name    string
		ips     []netip.Addr
		wantErr bool
	}{
		{"v4", []netip.Addr{v4}, false},
		{"dual", []netip.Addr{v4, v6}, false},
		{"mapped counts as v4", []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.1")}, false},
		{"none", nil, true},
		{"two v4", []netip.Addr{v4, netip.MustParseAddr("10.0.0.2")}, true},
		{"two v6", []netip.Addr{v6, netip.MustParseAddr("fd00::2")}, true},
		{"loopback", []netip.Addr{netip.MustParseAddr("127.0.0.1")}, true},
		{"unspecified", []netip.Addr{netip.IPv4Unspecified()}, true},
		{"invalid", []netip.Addr{{}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := podValue(tc.ips)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && tc.name == "v4" {
				b := make([]byte, 4)
				binary.NativeEndian.PutUint32(b, p.Ip4)
				if netip.AddrFrom4([4]byte(b)) != v4 || p.HasIp4 != 1 || p.HasIp6 != 0 {
					t.Errorf("pod value = %+v", p)
				}
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
	err := Config{PinDir: "rel", Cgroup: ""}.Validate()
	if err == nil {
		t.Fatal("relative paths accepted")
	}
}
