package redirect

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// ip16 returns a's 16-byte form, IPv4 as IPv4-mapped IPv6, as the four network-order words
// the programs compare against.
func ip16(a netip.Addr) [4]uint32 {
	b := a.As16() // an IPv4 address comes out IPv4-mapped
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

// addrFrom16 is the inverse of ip16; IPv4-mapped addresses come back as IPv4.
func addrFrom16(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

func addrKey(ap netip.AddrPort) redirectAddr {
	return redirectAddr{Ip: ip16(ap.Addr()), Port: ap.Port()}
}

func (a redirectAddr) addrPort() netip.AddrPort {
	return netip.AddrPortFrom(addrFrom16(a.Ip), a.Port)
}

// podValue builds the enrolled map value: at most one address per family.
func podValue(ips []netip.Addr) (redirectPod, error) {
	var p redirectPod
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case !ip.IsValid() || ip.IsUnspecified() || ip.IsLoopback():
			return p, fmt.Errorf("pod address %v is not usable", ip)
		case ip.Is4():
			if p.HasIp4 != 0 {
				return p, fmt.Errorf("more than one IPv4 pod address")
			}
			b := ip.As4()
			p.Ip4, p.HasIp4 = binary.NativeEndian.Uint32(b[:]), 1
		default:
			if p.HasIp6 != 0 {
				return p, fmt.Errorf("more than one IPv6 pod address")
			}
			p.Ip6, p.HasIp6 = ip16(ip), 1
		}
	}
	if p.HasIp4 == 0 && p.HasIp6 == 0 {
		return p, fmt.Errorf("no pod address")
	}
	return p, nil
}
