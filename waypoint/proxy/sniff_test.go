package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	const room = 64
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"G", ""},
		{"GET", ""},
		{"GET ", ""},
		{"GET /x", ""},
		{"GET /x ", ""},
		{"GET /x HTTP/1", "http"},
		{"GET /x HTTP/1.", "http"},
		{"GET / HTTP/1.1\r\n", "http"},
		{"\r", ""},
		{"\r\n", ""},
		{"\r\n\r", ""},
		{"\r\n\r\nGET / HTTP/1.1\r\n", "http"}, // empty lines first, which servers skip
		{"PRI", ""},
		{"PRI * HTT", ""},
		{h2Preface, "http2"},
		{h2Preface + "\r\n\r\nSM\r\n\r\n", "http2"},
		{"\r\n" + h2Preface, "http2"},
		{"PRI /x HTTP/1.1\r\n", "http"}, // a method named PRI, not the preface
		{"get / HTTP/1.1", "http"},      // a lowercase method, which Go's and Apache's servers take
		{"GET  /x\tHTTP/1.1", "http"},   // runs of blanks, which nginx takes
		{"GET / HTTP/2.0", "http"},      // the HTTP server answers it, not a backend
		{"\nGET / HTTP/1.1", "http"},
		{" GET", "tcp"},
		{"GET / FTP", "tcp"},
		{"GET /\r\n", "tcp"}, // HTTP/0.9
		{"GET /x HTTP", ""},
		{"PING\r\n", "tcp"},
		{"HELO mail.example.com\r\n", "tcp"}, // SMTP after the greeting: a command, not a request
		{"USER anonymous\r\n", "tcp"},
		{"*1\r\n$4\r\nPING\r\n", "tcp"},
		{"\x16\x03\x01\x02\x00", "tcp"}, // a TLS ClientHello
		{"SSH-2.0-OpenSSH_9.6\r\n", "tcp"},
		{"hi", ""},
		{"hi\n", "tcp"},
		{strings.Repeat("a", 30), ""},
		{strings.Repeat("A", 25) + " /admin HTTP/1.1", "http"}, // a long method, which Go takes
		{"GET /admin?x=\x80\x00 HTTP/1.1", "http"},             // raw bytes in the target
		{"get / http/1.1", "http"},
		{"GET /x htt", ""},
		{"GET /x HTX", "tcp"},
		{"ruok", ""},                                  // ZooKeeper's four-letter words look like a method: see the rules
		{"GET /" + strings.Repeat("a", room), "http"}, // longer than detection holds
		{strings.Repeat("\r\n", room/2), "http"},
	} {
		if got := classify([]byte(tc.in), room); got != tc.want {
			t.Errorf("classify(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// pipeReader returns a reader over one end of a pipe, and the other end for the test to write.
func pipeReader(t *testing.T) (*bufio.Reader, net.Conn) {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	return bufio.NewReaderSize(server, 4096), client
}

func writeChunks(t *testing.T, c net.Conn, chunks ...string) {
	t.Helper()
	go func() {
		for _, s := range chunks {
			if _, err := c.Write([]byte(s)); err != nil {
				return
			}
		}
	}()
}

// A short first message of a client-first protocol, whose client then waits for the answer,
// decides at once: sniff does not wait for bytes that will not come.
func TestSniffShortMessageDecidesAtOnce(t *testing.T) {
	for _, msg := range []string{"hi\n", "HELO mail.example.com\r\n"} {
		br, client := pipeReader(t)
		writeChunks(t, client, msg)
		if got := new(detection).sniff(br); got != "tcp" {
			t.Fatalf("sniff of %q = %q, want tcp", msg, got)
		}
		if b, _ := br.Peek(br.Buffered()); string(b) != msg {
			t.Errorf("buffered %q, want the client's bytes kept for the stream", b)
		}
	}
}

// Bytes that could still be HTTP are waited for, across reads.
func TestSniffWaitsWhileUndecided(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		want   string
	}{
		{[]string{"GE", "T / HTTP/1.1\r\n\r\n"}, "http"},
		{[]string{"GET /x", " HTTP/1.1\r\n\r\n"}, "http"},
		{[]string{"PRI * ", "HTTP/2.0\r\n\r\nSM\r\n\r\n"}, "http2"},
		{[]string{"P", "R", "I", " /x HTTP/1.1\r\n"}, "http"},
		{[]string{"\r\n", "GET / HTTP/1.1\r\n"}, "http"},
		{[]string{"HELO", " mail.example.com\r\n"}, "tcp"},
	} {
		br, client := pipeReader(t)
		writeChunks(t, client, tc.chunks...)
		if got := new(detection).sniff(br); got != tc.want {
			t.Errorf("sniff of %q = %q, want %q", tc.chunks, got, tc.want)
		}
	}
}

// A client that ends before deciding is TCP: without a byte, or with an unfinished request line,
// which no server would take as a request ("half-closed" is a token, as a method is).
func TestSniffClientEnds(t *testing.T) {
	for _, sent := range []string{"", "half-closed", "GET /admin HTT"} {
		br, client := pipeReader(t)
		go func() {
			_, _ = client.Write([]byte(sent))
			client.Close()
		}()
		if got := new(detection).sniff(br); got != "tcp" {
			t.Errorf("sniff of %q then the end = %q, want tcp", sent, got)
		}
	}
}

// A client that says nothing (the server speaks first) is TCP once the timeout passes, and what
// it sends later reaches the stream whole, through the read that detection had started.
func TestSniffWithinTimesOutToTCP(t *testing.T) {
	for _, late := range []string{"QUIT\r\n", "\x00\x00\x00\x08binary", "EHLO client.example.com\r\n"} {
		br, client := pipeReader(t)
		proto, pending := sniffWithin(context.Background(), br, time.Millisecond)
		if proto != "tcp" || pending == nil {
			t.Fatalf("sniffWithin = %q, %v; want tcp and a pending read", proto, pending)
		}
		c := &bufConn{r: br, pending: pending, checkLate: true}
		writeChunks(t, client, late[:len(late)-2], late[len(late)-2:]) // a line may come in two reads
		got := make([]byte, len(late))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != late {
			t.Fatalf("read after the timeout: %q, %v; want %q", got, err, late)
		}
		if c.pending != nil {
			t.Error("the pending read is still waited for after it returned")
		}
	}
}

// After a timeout, first bytes that could be HTTP close the tunnel: waiting out the timeout must
// not pass a request as TCP around routes, JWT checks and header filters, in one read or several.
func TestSniffWithinLateHTTPRefused(t *testing.T) {
	for _, late := range [][]string{{"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"}, {"GE", "T /admin HTTP/1.1\r\n"}, {h2Preface}} {
		br, client := pipeReader(t)
		proto, pending := sniffWithin(context.Background(), br, time.Millisecond)
		if proto != "tcp" || pending == nil {
			t.Fatalf("sniffWithin = %q, %v; want tcp and a pending read", proto, pending)
		}
		writeChunks(t, client, late...)
		c := &bufConn{r: br, pending: pending, checkLate: true}
		if n, err := c.Read(make([]byte, 64)); n != 0 || !errors.Is(err, errLateHTTP) {
			t.Errorf("read of late %q = %d, %v; want errLateHTTP", late, n, err)
		}
	}
}

// A client that sent part of what could be a request, then stopped, is closed once the timeout
// passes: a stalled request, or a protocol that needs appProtocol: tcp.
func TestSniffWithinPartialRequestCloses(t *testing.T) {
	br, client := pipeReader(t)
	expired := make(chan time.Time)
	go func() {
		// A pipe's write returns once read: the second is read only after detection has looked
		// at the first and gone back to wait.
		_, _ = client.Write([]byte("GET /x"))
		_, _ = client.Write([]byte(" "))
		close(expired)
	}()
	if proto, pending := sniffUntil(context.Background(), br, expired); proto != sniffPartial || pending == nil {
		t.Fatalf("sniffUntil = %q, %v; want %q and a pending read", proto, pending, sniffPartial)
	}
}

func TestSniffWithinDecidesBeforeTimeout(t *testing.T) {
	br, client := pipeReader(t)
	writeChunks(t, client, "GET / HTTP/1.1\r\n")
	if proto, pending := sniffWithin(context.Background(), br, time.Hour); proto != "http" || pending != nil {
		t.Fatalf("sniffWithin = %q, %v; want http and nothing pending", proto, pending)
	}
}

// A tunnel that ends (or a waypoint that stops) during detection ends it: "" and no fallback.
func TestSniffWithinContextEnds(t *testing.T) {
	br, _ := pipeReader(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if proto, _ := sniffWithin(ctx, br, time.Hour); proto != "" {
		t.Fatalf("sniffWithin after its context ended = %q, want \"\"", proto)
	}
}
