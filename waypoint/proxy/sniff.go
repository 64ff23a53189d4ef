package proxy

// Protocol detection, for Service ports that declare no protocol (no appProtocol, no name prefix).
//
// Rules:
//   - Decide on the first bytes, and wait for more only while what has arrived could still be
//     either: a prefix of the HTTP/2 preface, or of an HTTP/1 method token. A client-first
//     protocol whose first message is short ("PING\r\n") is TCP at once, never held waiting for
//     bytes its client will not send before an answer.
//   - A client that sends nothing is given DefaultSniffTimeout (Linkerd's detection timeout), then
//     passed through as TCP: the protocols in which the server speaks first (SMTP, MySQL) work,
//     late, and the first such tunnel of each Service port is logged with the fix (appProtocol:
//     tcp). Falling back never widens access: TCP is under L4 policy, where a rule that names
//     HTTP attributes denies (DENY) or never allows (ALLOW).
//   - The read that detection started is never abandoned: a tunnel that fell back reads on only
//     once that read has returned, so no byte is lost or read twice.

import (
	"bufio"
	"bytes"
	"time"
)

// DefaultSniffTimeout is how long a tunnel on a port without a declared protocol waits for its
// client's first bytes before it is passed through as TCP.
const DefaultSniffTimeout = 10 * time.Second

const h2Preface = "PRI * HTTP/2.0"

// maxMethod bounds an HTTP/1 method token: a longer run of capitals is not HTTP.
const maxMethod = 24

// sniff decides a tunnel's protocol from its client's first bytes: "http2" for the HTTP/2
// preface, "http" for an HTTP/1 request line, "tcp" for anything else, including a client that
// ends before deciding. It returns as soon as the bytes decide.
func sniff(br *bufio.Reader) string {
	_, err := br.Peek(1)
	for {
		b, _ := br.Peek(br.Buffered())
		if p := classify(b); p != "" {
			return p
		}
		if err != nil {
			return "tcp"
		}
		_, err = br.Peek(len(b) + 1)
	}
}

// classify is sniff's decision on the bytes so far; "" while they could still be either.
func classify(b []byte) string {
	if bytes.HasPrefix(b, []byte(h2Preface)) {
		return "http2"
	}
	if len(b) == 0 || bytes.HasPrefix([]byte(h2Preface), b) {
		return ""
	}
	// An HTTP/1 request line starts with a method token (capitals) and a space.
	for i, c := range b {
		switch {
		case c == ' ' && i > 0:
			return "http"
		case c < 'A' || c > 'Z' || i == maxMethod:
			return "tcp"
		}
	}
	return ""
}

// sniffWithin is sniff bounded by timeout. When the client has said nothing decisive by then it
// returns "tcp" and a channel closed when sniff's read returns: br must not be read before.
func sniffWithin(br *bufio.Reader, timeout time.Duration) (proto string, pending <-chan struct{}) {
	res := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		res <- sniff(br)
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case p := <-res:
		return p, nil
	case <-t.C:
		return "tcp", done
	}
}
