package images

import (
	"bufio"
	"context"
	"encoding/json"
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

// dialFor connects to addr for one exchange that must end within timeout.
func dialFor(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(timeout))
	}
	return c, err
}

// TCPEcho sends msg to addr, half-closes, and returns what came back.
func TCPEcho(ctx context.Context, addr, msg string, timeout time.Duration) (string, error) {
	c, err := dialFor(ctx, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
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

// TCPLine sends msg to addr (nothing when empty: the server speaks first) without half-closing,
// as a client that waits for its answer does, and returns the first line that comes back.
func TCPLine(ctx context.Context, addr, msg string, timeout time.Duration) (string, error) {
	c, err := dialFor(ctx, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if msg != "" {
		if _, err := io.WriteString(c, msg); err != nil {
			return "", err
		}
	}
	return bufio.NewReader(c).ReadString('\n')
}

// TCPGreet reads the first line addr sends (a server that speaks first), then sends msg and
// returns both lines, or the greeting and what ended the exchange.
func TCPGreet(ctx context.Context, addr, msg string, timeout time.Duration) (greeting, reply string, err error) {
	c, err := dialFor(ctx, addr, timeout)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if greeting, err = br.ReadString('\n'); err != nil {
		return greeting, "", err
	}
	if _, err := io.WriteString(c, msg); err != nil {
		return greeting, "", err
	}
	reply, err = br.ReadString('\n')
	return greeting, reply, err
}

// LoadReport is what Load saw: every connection counted once, as ok or failed.
type LoadReport struct {
	OK, Failed int
	// Errors holds the first failures, each with its time and target.
	Errors []string
	// Slowest is the longest a successful exchange took (a SYN retransmitted shows here).
	Slowest time.Duration
}

// Load opens a new connection every interval, round robin over addrs, and exchanges one message
// on each, until ctx ends. Exchanges run one at a time, so a slow one delays the next instead of
// piling up.
func Load(ctx context.Context, addrs []string, interval, timeout time.Duration) LoadReport {
	var r LoadReport
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return r
		case <-tick.C:
		}
		addr := addrs[i%len(addrs)]
		msg := fmt.Sprintf("load %d", i)
		start := time.Now()
		// The exchange is not cut by ctx: one that started is seen to its end.
		got, err := TCPEcho(context.WithoutCancel(ctx), addr, msg, timeout)
		if err == nil && got != msg {
			err = fmt.Errorf("echoed %q", got)
		}
		if err != nil {
			r.Failed++
			if len(r.Errors) < 10 {
				r.Errors = append(r.Errors, fmt.Sprintf("%s %s: %v", start.Format("15:04:05.000"), addr, err))
			}
			continue
		}
		r.OK++
		r.Slowest = max(r.Slowest, time.Since(start))
	}
}

// Hold keeps one connection to addr open for n exchanges, one every interval, and fails if any
// is lost.
func Hold(ctx context.Context, addr string, n int, interval, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 64)
	for i := range n {
		msg := fmt.Sprintf("hold %d\n", i)
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := io.WriteString(c, msg); err != nil {
			return fmt.Errorf("exchange %d of %d: %w", i+1, n, err)
		}
		if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil || string(buf[:len(msg)]) != msg {
			return fmt.Errorf("exchange %d of %d: read %q, %v", i+1, n, buf[:len(msg)], err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
	return nil
}

// Result is one request's outcome, as Requests reports it.
type Result struct {
	Code     int    `json:"code,omitempty"`
	Pod      string `json:"pod,omitempty"`
	Location string `json:"location,omitempty"`
	// Headers are the request headers the echo server received.
	Headers map[string][]string `json:"headers,omitempty"`
	// ResponseHeaders are the response's headers, when asked for.
	ResponseHeaders map[string][]string `json:"response_headers,omitempty"`
	Err             string              `json:"err,omitempty"`
}

// RequestSpec is what Requests sends: N requests of Method (GET when empty) to URL with Header.
type RequestSpec struct {
	URL     string
	N       int
	Method  string
	Header  http.Header
	H2C     bool
	Timeout time.Duration
	// ResponseHeaders puts each response's headers in its Result.
	ResponseHeaders bool
}

// Requests sends the requests over kept-alive connections, not following redirects, and
// returns each outcome (the echo server's reply decoded when it is one).
func Requests(ctx context.Context, spec RequestSpec) []Result {
	url, n, header, timeout := spec.URL, spec.N, spec.Header, spec.Timeout
	method := spec.Method
	if method == "" {
		method = http.MethodGet
	}
	rt := &http.Transport{}
	if spec.H2C {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		rt.Protocols = &protos
	}
	defer rt.CloseIdleConnections()
	c := &http.Client{Transport: rt, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	out := make([]Result, 0, n)
	for range n {
		var r Result
		req, err := http.NewRequestWithContext(ctx, method, url, nil)
		if err != nil {
			return append(out, Result{Err: err.Error()})
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := c.Do(req)
		if err != nil {
			out = append(out, Result{Err: err.Error()})
			continue
		}
		r.Code, r.Location = resp.StatusCode, resp.Header.Get("Location")
		if spec.ResponseHeaders {
			r.ResponseHeaders = resp.Header
		}
		var reply EchoReply
		if b, err := io.ReadAll(resp.Body); err == nil && json.Unmarshal(b, &reply) == nil {
			r.Pod, r.Headers = reply.Pod, reply.Headers
		}
		resp.Body.Close()
		out = append(out, r)
	}
	return out
}
