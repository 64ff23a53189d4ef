package proxy

// Protocol detection, for Service ports that declare no protocol (no appProtocol, no name prefix).
//
// Rules:
//   - Decide on the first bytes, and wait for more only while what has arrived could still be
//     HTTP: a prefix of the HTTP/2 preface, or of an HTTP/1 request line as the most lenient
//     servers read one (any token as method, runs of blanks, any byte but blanks and line ends
//     in the target, "HTTP/" in any case), after the empty lines servers skip. So a request a
//     lenient backend would still parse (two spaces, a lowercase method, a tab, a raw byte in
//     the path) does not pass as TCP around the L7 configuration, while a client-first protocol
//     whose first message is short ("PING\r\n"), or a command line ("HELO host\r\n"), is TCP at
//     once. The one exception is HTTP/0.9's "GET /path\r\n", which Redis's inline commands look
//     like: it is TCP.
//   - A request line longer than detection can hold is HTTP: misjudged, a stream fails at the
//     HTTP server; misjudged the other way, it would pass as TCP around the L7 configuration.
//   - A client that sends nothing for the detection timeout (Linkerd's 10 s by default) is
//     passed through as TCP, so that protocols in which the server speaks first (SMTP, MySQL)
//     work, late; the first such tunnel of each Service port is logged with the fix
//     (appProtocol: tcp). What such a client sends first must then be plainly not HTTP: the
//     stream waits until its bytes decide, and anything that could be HTTP closes the tunnel
//     (errLateHTTP), because TCP skips routes, JWT checks and header filters, and a client could
//     otherwise wait out the timeout to skip them. Authorization is never skipped: on TCP, a
//     rule that names HTTP attributes denies (DENY) or never allows (ALLOW).
//   - A client that had sent part of what could be a request line when the timeout passed is
//     closed, and logged like a silent one: either a stalled request or a protocol whose short
//     message looks like one (ZooKeeper's "ruok"), which needs appProtocol: tcp.
//   - The read that detection started is never abandoned: after a timeout, detection stops once
//     that read returns, and the stream reads on only then, so no byte is lost or read twice.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultSniffTimeout is how long a tunnel on a port without a declared protocol waits for its
// client's first bytes before it is passed through as TCP.
const DefaultSniffTimeout = 10 * time.Second

const h2Preface = "PRI * HTTP/2.0"

// errLateHTTP ends a tunnel that fell back to TCP when its first bytes could be HTTP.
var errLateHTTP = errors.New("the client's first bytes, sent after protocol detection timed out, may be HTTP: " +
	"the tunnel is closed rather than passed through as TCP around the port's L7 configuration")

// detection is one tunnel's sniff: stop ends it once a read returns, seen is how many bytes it
// has looked at.
type detection struct {
	stop atomic.Bool
	seen atomic.Int32
}

// sniff decides a tunnel's protocol from its client's first bytes: "http2" for the HTTP/2
// preface, "http" for an HTTP/1 request line, "tcp" for anything else, including a client that
// ends before deciding (an unfinished request line is no request to any server). It returns as
// soon as the bytes decide, or with "" once a read returns after stop is set.
func (d *detection) sniff(br *bufio.Reader) string {
	_, err := br.Peek(1)
	for {
		b, _ := br.Peek(br.Buffered())
		d.seen.Store(int32(len(b)))
		p := classify(b, br.Size())
		switch {
		case p != "":
			return p
		case err != nil:
			return "tcp"
		}
		if d.stop.Load() {
			return ""
		}
		_, err = br.Peek(len(b) + 1)
	}
}

// classify is sniff's decision on the bytes so far, held in a buffer of size room; "" while they
// could still be HTTP.
func classify(b []byte, room int) string {
	full := len(b) >= room
	b = bytes.TrimLeft(b, "\r\n") // empty lines before a request line (RFC 9112 §2.2)
	switch {
	case bytes.HasPrefix(b, []byte(h2Preface)):
		return "http2"
	case len(b) == 0 || bytes.HasPrefix([]byte(h2Preface), b):
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

// requestLine matches the start of an HTTP/1 request line as a lenient server reads one: a
// token (the method), blanks, the target (up to a blank or a line end), blanks, "HTTP/" in any
// case.
func requestLine(b []byte) int {
	i := 0
	for i < len(b) && isTchar(b[i]) {
		i++
	}
	switch {
	case i == len(b):
		return linePrefix
	case i == 0 || !isBlank(b[i]):
		return lineNot
	}
	for i < len(b) && isBlank(b[i]) {
		i++
	}
	start := i
	for i < len(b) && !isBlank(b[i]) && b[i] != '\r' && b[i] != '\n' {
		i++
	}
	switch {
	case i == len(b):
		return linePrefix
	case i == start || !isBlank(b[i]):
		return lineNot
	}
	for i < len(b) && isBlank(b[i]) {
		i++
	}
	rest, version := b[i:], []byte("HTTP/")
	switch {
	case len(rest) >= len(version) && bytes.EqualFold(rest[:len(version)], version):
		return lineHTTP
	case bytes.EqualFold(rest, version[:len(rest)]):
		return linePrefix
	}
	return lineNot
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' }

// isTchar reports whether c may be in an HTTP token (RFC 9110 §5.6.2), which a method is.
func isTchar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// sniffPartial is sniffWithin's answer for a client that had sent part of what could be a
// request line when the timeout passed: the tunnel is closed.
const sniffPartial = "partial"

// sniffWithin is sniff bounded by timeout and ctx. When the client has said nothing decisive by
// then, it returns "tcp" when the client had sent nothing, sniffPartial when it had sent part of
// what could be a request (or "" when ctx ended), and a channel closed once sniff's read has
// returned: br must not be read before.
func sniffWithin(ctx context.Context, br *bufio.Reader, timeout time.Duration) (proto string, pending <-chan struct{}) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	return sniffUntil(ctx, br, t.C)
}

// sniffUntil is sniffWithin with the timeout as a channel.
func sniffUntil(ctx context.Context, br *bufio.Reader, expired <-chan time.Time) (proto string, pending <-chan struct{}) {
	res := make(chan string, 1)
	done := make(chan struct{})
	d := new(detection)
	go func() {
		res <- d.sniff(br)
		close(done)
	}()
	select {
	case p := <-res:
		return p, nil
	case <-expired:
		proto = "tcp"
	case <-ctx.Done():
	}
	d.stop.Store(true)
	select {
	case p := <-res: // decided as the timer fired
		if proto != "" {
			proto = p
		}
		return proto, nil
	default:
		if proto != "" && d.seen.Load() > 0 {
			proto = sniffPartial
		}
		return proto, done
	}
}

// lateBytes checks, once a timed-out detection's read has returned, that what the client sent
// first is plainly not HTTP, reading on while its bytes could still be (a line in two reads).
func lateBytes(br *bufio.Reader) error {
	if new(detection).sniff(br) != "tcp" {
		return errLateHTTP
	}
	return nil
}
