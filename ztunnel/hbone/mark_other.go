//go:build !linux

package hbone

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

// MarkedDialer returns a Dialer that fails: socket marks exist only on Linux, and an unmarked
// mesh socket would be redirected back into the mesh.
func MarkedDialer(mark int) Dialer {
	return func(context.Context, netip.AddrPort) (net.Conn, error) {
		return nil, errors.New("hbone: SO_MARK is only supported on linux")
	}
}
