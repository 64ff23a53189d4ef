package netutil

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"syscall"
	"testing"
)

// scripted is a listener whose Accept returns the errors it is given, then real connections.
type scripted struct {
	net.Listener
	errs []error
}

func (l *scripted) Accept() (net.Conn, error) {
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	return l.Listener.Accept()
}

func TestAcceptRetriesPassingErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	got, err := Accept(context.Background(), &scripted{Listener: ln, errs: []error{emfile, emfile}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Accept after two EMFILE: %v", err)
	}
	got.Close()
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
