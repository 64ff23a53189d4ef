package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// HTTPGet fetches url (HTTP/1.1, or h2c prior knowledge when h2c is set) and returns the body.
func HTTPGet(ctx context.Context, url string, h2c bool, timeout time.Duration) (int, []byte, error) {
	rt := &http.Transport{DisableKeepAlives: true}
	if h2c {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true) // prior knowledge, no upgrade
		rt.Protocols = &protos
	}
	c := &http.Client{Transport: rt, Timeout: timeout}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// TCPEcho sends msg to addr, half-closes, and returns what came back.
func TCPEcho(ctx context.Context, addr, msg string, timeout time.Duration) (string, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.Copy(c, strings.NewReader(msg)); err != nil {
		return "", err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return "", errors.New("not a TCP connection")
	}
	if err := tc.CloseWrite(); err != nil {
		return "", fmt.Errorf("close write: %w", err)
	}
	b, err := io.ReadAll(c)
	return string(b), err
}
