package netutil

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"syscall"
	"testing"
)

// scripted is a listener whose Accept returns the errors it is given, then conn.
type scripted struct {
	net.Listener
	errs []error
	conn net.Conn
}

func (l *scripted) Accept() (net.Conn, error) {
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	return l.conn, nil
}

func (l *scripted) Addr() net.Addr { return &net.TCPAddr{} }

func TestAcceptRetriesPassingErrors(t *testing.T) {
	c, peer := net.Pipe()
	defer c.Close()
	defer peer.Close()
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	got, err := Accept(context.Background(), &scripted{errs: []error{emfile, emfile}, conn: c}, slog.New(slog.DiscardHandler))
	if err != nil || got != c {
		t.Fatalf("Accept after two EMFILE: %v, %v; want the connection", got, err)
	}
}

func TestAcceptStops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := Accept(context.Background(), ln, slog.New(slog.DiscardHandler)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("closed listener: got %v, want net.ErrClosed", err)
	}
	// A context that has ended stops the retries at the first error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	if _, err := Accept(ctx, &scripted{errs: []error{emfile}}, slog.New(slog.DiscardHandler)); !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("ended context: got %v, want the accept error", err)
	}
}
