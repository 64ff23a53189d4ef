//go:build !linux

package zds

import (
	"errors"
	"net"
)

func listen(string) (*net.UnixListener, error) { return nil, errors.ErrUnsupported }

func peerCred(*net.UnixConn) (int32, uint32, error) { return 0, 0, errors.ErrUnsupported }
