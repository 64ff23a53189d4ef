package redirect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
)

// Pinned is the proxy's view of the redirector: the two maps it writes and reads (its listeners,
// and the original destinations of captured connections), opened from the pins the node agent
// made. It loads and attaches nothing, so a proxy needs no more privilege than access to the
// pin directory, and a proxy restart changes nothing in the kernel.
type Pinned struct {
	listeners *ebpf.Map
	origPeer  *ebpf.Map
	r         *Redirector // the methods are the Redirector's, over these two maps
}

// OpenPinned opens the maps pinned under pinDir by the agent's Load.
func OpenPinned(pinDir string) (*Pinned, error) {
	dir := Config{PinDir: pinDir}.mapDir()
	l, err := ebpf.LoadPinnedMap(filepath.Join(dir, "listeners"), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned listeners map (is the node agent running?): %w", err)
	}
	o, err := ebpf.LoadPinnedMap(filepath.Join(dir, "orig_by_peer"), nil)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("open pinned orig_by_peer map (is the node agent running?): %w", err)
	}
	p := &Pinned{listeners: l, origPeer: o}
	p.r = &Redirector{objs: objects{Listeners: l, OrigByPeer: o}}
	return p, nil
}

// WaitPinned opens the pinned maps, waiting for the node agent to make them (it pins them when
// it starts, and a proxy may start first). It returns ctx's error if ctx ends first; log, if
// not nil, hears why it waits.
func WaitPinned(ctx context.Context, pinDir string, log *slog.Logger) (*Pinned, error) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		p, err := OpenPinned(pinDir)
		if err == nil {
			return p, nil
		}
		if log != nil {
			log.Info("waiting for the node agent's maps", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// RegisterListener is Redirector.RegisterListener.
func (p *Pinned) RegisterListener(netns uint64, kind ListenerKind, conn syscall.Conn) error {
	return p.r.RegisterListener(netns, kind, conn)
}

// LookupOrigDst is Redirector.LookupOrigDst.
func (p *Pinned) LookupOrigDst(peer netip.AddrPort) (netip.AddrPort, error) {
	return p.r.LookupOrigDst(peer)
}

// Close releases the maps; the pins stay.
func (p *Pinned) Close() error {
	return errors.Join(p.listeners.Close(), p.origPeer.Close())
}

// EnrolledNetNS returns the cookies of every enrolled network namespace: after a restart, the
// agent compares them with the pods it knows to find the ones whose pod went while it was away.
func (r *Redirector) EnrolledNetNS() ([]uint64, error) {
	var (
		k   uint64
		v   []byte
		out []uint64
	)
	it := r.objs.Enrolled.Iterate()
	for it.Next(&k, &v) {
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list enrolled namespaces: %w", err)
	}
	return out, nil
}
