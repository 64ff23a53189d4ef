package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// resetOnDeadline is a conn that, like an HBONE tunnel, breaks for good when a read deadline
// is set in the past.
type resetOnDeadline struct{ net.Conn }

func (c resetOnDeadline) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		c.Conn.Close()
	}
	return nil
}

func TestSoftDeadlinesNeverEndTheConn(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := newSoftDeadlines(resetOnDeadline{a})
	defer c.Close()
	// A read blocked when the deadline passes returns a timeout, as net/http expects.
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		errc <- err
	}()
	_ = c.SetReadDeadline(time.Unix(1, 0))
	if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with a past deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	// Cleared, the connection goes on: what the peer sends arrives whole.
	_ = c.SetReadDeadline(time.Time{})
	go func() { _, _ = b.Write([]byte("hello, world")) }()
	got := make([]byte, 12)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello, world" {
		t.Fatalf("after the deadline: %q, %v", got, err)
	}
	b.Close()
	if _, err := c.Read(got); err != io.EOF {
		t.Errorf("after the peer closed: %v, want EOF", err)
	}
}

// A future deadline ends the Read it passes under; moved, the same timer serves the next wait.
func TestSoftDeadlinesTimer(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := newSoftDeadlines(resetOnDeadline{a})
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Hour))
	go func() { _, _ = b.Write([]byte("later")) }()
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "later" {
		t.Fatalf("with a far deadline: %q, %v", got, err)
	}
}

// A server that closes the connection with a chunk read and not taken (a request's body it did
// not read, a line that never ended) ends the pump: nothing is left waiting for a reader.
func TestSoftDeadlinesCloseEndsThePump(t *testing.T) {
	for _, consume := range []bool{false, true} {
		a, b := net.Pipe()
		c := newSoftDeadlines(a)
		go func() { _, _ = b.Write([]byte("a chunk, then another")) }()
		got := make([]byte, 4)
		if _, err := c.Read(got); err != nil { // starts the pump, which holds the chunk
			t.Fatal(err)
		}
		if consume { // the chunk taken whole: the pump waits for more, or for its turn
			rest := make([]byte, 64)
			_, _ = c.Read(rest)
			go func() { _, _ = b.Write([]byte("more")) }()
		}
		c.Close()
		<-c.pumped
		if _, err := c.Read(got); err == nil {
			t.Errorf("read after Close: nil error")
		}
		b.Close()
	}
}
