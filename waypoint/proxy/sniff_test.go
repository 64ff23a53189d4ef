package proxy

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"G", ""},
		{"GET", ""},
		{"GET ", "http"},
		{"GET / HTTP/1.1\r\n", "http"},
		{"PRI", ""},
		{"PRI * HTT", ""},
		{h2Preface, "http2"},
		{h2Preface + "\r\n\r\nSM\r\n\r\n", "http2"},
		{"PRI /x HTTP/1.1\r\n", "http"}, // a method named PRI, not the preface
		{"get / HTTP/1.1", "tcp"},
		{" GET", "tcp"},
		{"PING\r\n", "tcp"},
		{"*1\r\n$4\r\nPING\r\n", "tcp"},
		{"\x16\x03\x01\x02\x00", "tcp"}, // a TLS ClientHello
		{"SSH-2.0-OpenSSH", "tcp"},
		{strings.Repeat("A", maxMethod), ""},
		{strings.Repeat("A", maxMethod+1), "tcp"},
	} {
		if got := classify([]byte(tc.in)); got != tc.want {
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
	br, client := pipeReader(t)
	writeChunks(t, client, "hi\n")
	if got := sniff(br); got != "tcp" {
		t.Fatalf("sniff = %q, want tcp", got)
	}
	if b, _ := br.Peek(br.Buffered()); string(b) != "hi\n" {
		t.Errorf("buffered %q, want the client's bytes kept for the stream", b)
	}
}

// Bytes that could still be either are waited for, across reads.
func TestSniffWaitsWhileUndecided(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		want   string
	}{
		{[]string{"GE", "T / HTTP/1.1\r\n\r\n"}, "http"},
		{[]string{"PRI * ", "HTTP/2.0\r\n\r\nSM\r\n\r\n"}, "http2"},
		{[]string{"P", "R", "I", " /x HTTP/1.1\r\n"}, "http"},
	} {
		br, client := pipeReader(t)
		writeChunks(t, client, tc.chunks...)
		if got := sniff(br); got != tc.want {
			t.Errorf("sniff of %q = %q, want %q", tc.chunks, got, tc.want)
		}
	}
}

func TestSniffClientEndsFirst(t *testing.T) {
	br, client := pipeReader(t)
	client.Close()
	if got := sniff(br); got != "tcp" {
		t.Fatalf("sniff of a client that ended = %q, want tcp", got)
	}
}

// A client that says nothing (the server speaks first) is TCP once the timeout passes, and what
// it sends later reaches the stream whole, through the read that detection had started.
func TestSniffWithinTimesOutToTCP(t *testing.T) {
	br, client := pipeReader(t)
	proto, pending := sniffWithin(br, time.Millisecond)
	if proto != "tcp" || pending == nil {
		t.Fatalf("sniffWithin = %q, %v; want tcp and a pending read", proto, pending)
	}
	c := &bufConn{r: br, pending: pending}
	writeChunks(t, client, "QUIT\r\n")
	got := make([]byte, 6)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "QUIT\r\n" {
		t.Fatalf("read after the timeout: %q, %v", got, err)
	}
	if c.pending != nil {
		t.Error("the pending read is still waited for after it returned")
	}
}

func TestSniffWithinDecidesBeforeTimeout(t *testing.T) {
	br, client := pipeReader(t)
	writeChunks(t, client, "GET / HTTP/1.1\r\n")
	if proto, pending := sniffWithin(br, time.Hour); proto != "http" || pending != nil {
		t.Fatalf("sniffWithin = %q, %v; want http and nothing pending", proto, pending)
	}
}
