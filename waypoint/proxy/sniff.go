package proxy

// Protocol detection, for Service ports that declare no protocol (no appProtocol, no name prefix).
//
// Rules:
//   - Decide on the first bytes, and wait for more only while what has arrived could still be
//     HTTP: a prefix of the HTTP/2 preface, or of an HTTP/1 request line (method, target,
//     "HTTP/1."), after the empty lines a server ignores. A client-first protocol whose first
//     message is short ("PING\r\n"), or merely looks like a command ("HELO host\r\n"), is TCP at
//     once, never held waiting for bytes its client will not send before an answer.
//   - A request line longer than detection can hold is HTTP: misjudged, a stream fails at the
//     HTTP server; misjudged the other way, it would pass as TCP around the L7 configuration.
//   - A client that sends nothing decisive for the detection timeout (Linkerd's 10 s by default)
//     is passed through as TCP, so that protocols in which the server speaks first (SMTP, MySQL)
//     work, late; the first such tunnel of each Service port is logged with the fix
//     (appProtocol: tcp). What such a client sends first must then be plainly not HTTP:
//     anything that could be closes the tunnel (errLateHTTP), because TCP skips routes, JWT
//     checks and header filters, and a client could otherwise wait out the timeout to skip them.
//     Authorization is never skipped: on TCP, a rule that names HTTP attributes denies (DENY) or
//     never allows (ALLOW).
//   - The read that detection started is never abandoned: after a timeout, detection stops once
//     that read returns, and the stream reads on only then, so no byte is lost or read twice.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// DefaultSniffTimeout is how long a tunnel on a port without a declared protocol waits for its
// client's first bytes before it is passed through as TCP.
const DefaultSniffTimeout = 10 * time.Second

const h2Preface = "PRI * HTTP/2.0"

// maxMethod bounds an HTTP/1 method token: a longer run of capitals is not HTTP.
const maxMethod = 24

// errLateHTTP ends a tunnel that fell back to TCP when its first bytes could be HTTP.
var errLateHTTP = errors.New("the client's first bytes, sent after protocol detection timed out, may be HTTP: " +
	"the tunnel is closed rather than passed through as TCP around the port's L7 configuration")

// sniff decides a tunnel's protocol from its client's first bytes: "http2" for the HTTP/2
// preface, "http" for an HTTP/1 request line (or what could still be one when the client ends),
// "tcp" for anything else, including a client that ends without a byte. It returns as soon as the bytes decide, or with "" once a read returns
// after stop is set.
func sniff(br *bufio.Reader, stop *atomic.Bool) string {
	_, err := br.Peek(1)
	for {
		b, _ := br.Peek(br.Buffered())
		p := classify(b, br.Size())
		switch {
		case p != "":
			return p
		case err != nil && len(b) > 0:
			return "http" // it ended what could still be a request: the HTTP server judges it
		case err != nil:
			return "tcp"
		}
		if stop.Load() {
			return ""
		}
		_, err = br.Peek(len(b) + 1)
	}
}

// classify is sniff's decision on the bytes so far, held in a buffer of size room; "" while they
// could still be HTTP.
func classify(b []byte, room int) string {
	full := len(b) >= room
	for bytes.HasPrefix(b, []byte("\r\n")) { // empty lines before a request line (RFC 9112 §2.2)
		b = b[2:]
	}
	switch {
	case bytes.HasPrefix(b, []byte(h2Preface)):
		return "http2"
	case len(b) == 0 || bytes.HasPrefix([]byte(h2Preface), b) || bytes.Equal(b, []byte("\r")):
	default:
		switch requestLine(b) {
		case lineHTTP:
			return "http"
		case lineNot:
			return "tcp"
		}
	}
	if full {
		return "http" // a request line too long to see whole: see the rules
	}
	return ""
}

const (
	linePrefix = iota // could still become a request line
	lineHTTP
	lineNot
)

// requestLine matches the start of an HTTP/1 request line: method SP target SP "HTTP/1.".
func requestLine(b []byte) int {
	i := 0
	for i < len(b) && b[i] >= 'A' && b[i] <= 'Z' {
		i++
	}
	switch {
	case i > maxMethod:
		return lineNot
	case i == len(b):
		return linePrefix
	case i == 0 || b[i] != ' ':
		return lineNot
	}
	i++
	start := i
	for i < len(b) && b[i] > ' ' && b[i] < 0x7f {
		i++
	}
	switch {
	case i == len(b):
		return linePrefix
	case i == start || b[i] != ' ':
		return lineNot
	}
	rest, version := b[i+1:], []byte("HTTP/1.")
	switch {
	case bytes.HasPrefix(rest, version):
		return lineHTTP
	case bytes.HasPrefix(version, rest):
		return linePrefix
	}
	return lineNot
}

// sniffWithin is sniff bounded by timeout and ctx. When the client has said nothing decisive by
// then it returns "tcp" (or "" when ctx ended) and a channel closed once sniff's read has
// returned: br must not be read before.
func sniffWithin(ctx context.Context, br *bufio.Reader, timeout time.Duration) (proto string, pending <-chan struct{}) {
	res := make(chan string, 1)
	done := make(chan struct{})
	stop := new(atomic.Bool)
	go func() {
		res <- sniff(br, stop)
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case p := <-res:
		return p, nil
	case <-t.C:
		proto = "tcp"
	case <-ctx.Done():
	}
	stop.Store(true)
	select {
	case p := <-res: // decided as the timer fired
		if proto != "" {
			proto = p
		}
		return proto, nil
	default:
		return proto, done
	}
}

// lateBytes checks, once a timed-out detection's read has returned, that what the client sent
// first is plainly not HTTP.
func lateBytes(br *bufio.Reader) error {
	b, _ := br.Peek(br.Buffered())
	if len(b) > 0 && classify(b, br.Size()) != "tcp" {
		return errLateHTTP
	}
	return nil
}
