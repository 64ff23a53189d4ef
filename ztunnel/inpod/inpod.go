// Package inpod runs ztunnel's listeners inside the network namespaces of the pods it serves
// (DESIGN.md §4): it takes pods from the node agent over ZDS, opens :15001 (outbound), :15006
// (inbound plaintext) and :15008 (HBONE) in each pod's namespace, registers the inbound two with
// the redirector, and hands every accepted connection to a Handler. It also dials from a pod's
// namespace, for the connections ztunnel makes on the pod's behalf.
//
// It decides nothing about a connection (the Handler does) and never opens a socket outside the
// pod's namespace. Every socket carries mesh.SocketMark, SO_REUSEPORT (a new ztunnel binds
// beside the old one) and no MPTCP (the kernel keeps MPTCP sockets out of a SOCKHASH).
package inpod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
	"github.com/ambient-mesh/ambient/internal/netutil"
	"github.com/ambient-mesh/ambient/redirect"
	"golang.org/x/sys/unix"
)

// Pod is an enrolled pod ztunnel serves.
type Pod struct {
	UID, Name, Namespace, ServiceAccount string
	IPs                                  []netip.Addr
	NetnsCookie                          uint64

	mu     sync.RWMutex // held for reading while a socket is made in netns; closing takes it
	netns  *os.File
	closed bool

	draining chan struct{} // closed when the pod's removal starts
}

// Draining is closed when the pod's removal starts: its listeners are closed and its open
// connections have until the drain deadline. A handler that multiplexes (HBONE) tells its peer
// to take new work elsewhere then (GOAWAY), instead of at the deadline.
func (p *Pod) Draining() <-chan struct{} { return p.draining }

// ErrPodGone is returned by Dial once the pod has been removed.
var ErrPodGone = errors.New("pod no longer served")

// Key is the pod's namespace/name.
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// Dial opens a TCP connection from inside the pod's network namespace, marked as ztunnel's.
func (p *Pod) Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return nil, ErrPodGone
	}
	return redirect.InNetNS(int(p.netns.Fd()), func() (net.Conn, error) {
		d := net.Dialer{Control: markControl}
		d.SetMultipathTCP(false)
		return d.DialContext(ctx, "tcp", addr.String())
	})
}

// Gone reports whether the pod has been removed and its namespace released.
func (p *Pod) Gone() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.closed
}

func (p *Pod) closeNetns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		p.netns.Close()
	}
}

// Handler serves the connections accepted in a pod. Each call runs on its own goroutine and
// owns the connection; ctx ends when the pod is removed and its drain deadline passes.
type Handler interface {
	Outbound(ctx context.Context, p *Pod, c net.Conn)
	Inbound(ctx context.Context, p *Pod, c net.Conn)
	HBONE(ctx context.Context, p *Pod, c net.Conn)
}

// Registrar takes the inbound listeners (redirect.Pinned in production).
type Registrar interface {
	RegisterListener(netns uint64, kind redirect.ListenerKind, conn syscall.Conn) error
}

// Config configures a Manager.
type Config struct {
	Registrar Registrar
	Handler   Handler
	Log       *slog.Logger
	// Drain bounds how long a removed pod's open connections may go on.
	Drain time.Duration
	// OnChange is called (without locks held) after pods are added or removed.
	OnChange func()
	// OnRemoved is called once a removed pod's connections have all ended (drained or cut):
	// what was kept for the pod can go then, not before.
	OnRemoved func(*Pod)
}

// Manager holds the pods and their listeners. It implements zds.Handler.
type Manager struct {
	cfg  Config
	mu   sync.Mutex
	pods map[string]*served // by uid
}

type served struct {
	pod       *Pod
	listeners []net.Listener
	ctx       context.Context
	cancel    context.CancelFunc
	conns     sync.WaitGroup
}

// New returns a Manager.
func New(cfg Config) *Manager {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 30 * time.Second
	}
	return &Manager{cfg: cfg, pods: map[string]*served{}}
}

// Pods returns the pods served now.
func (m *Manager) Pods() []*Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Pod, 0, len(m.pods))
	for _, s := range m.pods {
		out = append(out, s.pod)
	}
	return out
}

// AddWorkload opens the pod's listeners; a re-add of the same namespace keeps them.
func (m *Manager) AddWorkload(_ context.Context, w *zdsv1.WorkloadInfo, cookie uint64, netns *os.File) error {
	m.mu.Lock()
	old := m.pods[w.Uid]
	if old != nil && old.pod.NetnsCookie == cookie {
		m.mu.Unlock()
		netns.Close()
		return nil
	}
	m.mu.Unlock()
	if old != nil {
		m.remove(w.Uid, 0) // a new sandbox for the same pod: the old namespace is gone
	}
	p := &Pod{UID: w.Uid, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, NetnsCookie: cookie,
		netns: netns, draining: make(chan struct{})}
	for _, s := range w.Ips {
		if a, err := netip.ParseAddr(s); err == nil {
			p.IPs = append(p.IPs, a.Unmap())
		}
	}
	ls, err := listenIn(netns, []int{mesh.PortOutbound, mesh.PortInboundPlaintext, mesh.PortHBONE})
	if err != nil {
		netns.Close()
		return fmt.Errorf("listen in pod %s: %w", p.Key(), err)
	}
	s := &served{pod: p, listeners: ls}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	closeAll := func() {
		for _, l := range ls {
			l.Close()
		}
		netns.Close()
	}
	if m.cfg.Registrar != nil {
		if err := errors.Join(
			m.cfg.Registrar.RegisterListener(cookie, redirect.ListenerInbound, ls[1].(*net.TCPListener)),
			m.cfg.Registrar.RegisterListener(cookie, redirect.ListenerHBONE, ls[2].(*net.TCPListener)),
		); err != nil {
			closeAll()
			return fmt.Errorf("pod %s: %w", p.Key(), err)
		}
	}
	handlers := []func(context.Context, *Pod, net.Conn){m.cfg.Handler.Outbound, m.cfg.Handler.Inbound, m.cfg.Handler.HBONE}
	for i, l := range ls {
		go m.accept(s, l, handlers[i])
	}
	m.mu.Lock()
	m.pods[w.Uid] = s
	m.mu.Unlock()
	m.cfg.Log.Info("pod added", "pod", p.Key(), "netns_cookie", cookie, "ips", p.IPs)
	m.changed()
	return nil
}

// KeepWorkload confirms a pod the agent could not hand over again.
func (m *Manager) KeepWorkload(uid string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.pods[uid]; !ok {
		return fmt.Errorf("keep: pod %s is not served here", uid)
	}
	return nil
}

// DelWorkload stops accepting in the pod and drains its connections in the background.
func (m *Manager) DelWorkload(uid string) error {
	m.remove(uid, m.cfg.Drain)
	return nil
}

// SnapshotDone drops the pods the agent no longer has.
func (m *Manager) SnapshotDone(replayed map[string]bool) {
	m.mu.Lock()
	var gone []string
	for uid := range m.pods {
		if !replayed[uid] {
			gone = append(gone, uid)
		}
	}
	m.mu.Unlock()
	for _, uid := range gone {
		m.remove(uid, m.cfg.Drain)
	}
}

// Close stops every pod, draining up to the Drain deadline, and returns when all are done.
func (m *Manager) Close() {
	m.mu.Lock()
	uids := make([]string, 0, len(m.pods))
	for uid := range m.pods {
		uids = append(uids, uid)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, uid := range uids {
		wg.Add(1)
		go func() { defer wg.Done(); m.removeWait(uid, m.cfg.Drain) }()
	}
	wg.Wait()
}

// remove stops the pod at once (its listeners close, and the kernel drops their SOCKHASH
// entries) and drains its connections in the background.
func (m *Manager) remove(uid string, drain time.Duration) {
	if s := m.detach(uid); s != nil {
		go m.drain(s, drain)
	}
}

// removeWait is remove, returning when the pod is drained.
func (m *Manager) removeWait(uid string, drain time.Duration) {
	if s := m.detach(uid); s != nil {
		m.drain(s, drain)
	}
}

func (m *Manager) detach(uid string) *served {
	m.mu.Lock()
	s := m.pods[uid]
	delete(m.pods, uid)
	m.mu.Unlock()
	if s == nil {
		return nil
	}
	for _, l := range s.listeners {
		l.Close()
	}
	close(s.pod.draining)
	m.changed()
	return s
}

// drain lets open connections finish for up to d, then cancels them.
func (m *Manager) drain(s *served, d time.Duration) {
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	t := time.NewTimer(d)
	select {
	case <-done:
	case <-t.C:
		m.cfg.Log.Info("drain deadline: closing the pod's connections", "pod", s.pod.Key())
	}
	t.Stop()
	s.cancel()
	<-done
	s.pod.closeNetns()
	if m.cfg.OnRemoved != nil {
		m.cfg.OnRemoved(s.pod)
	}
	m.cfg.Log.Info("pod removed", "pod", s.pod.Key())
}

func (m *Manager) changed() {
	if m.cfg.OnChange != nil {
		m.cfg.OnChange()
	}
}

func (m *Manager) accept(s *served, l net.Listener, h func(context.Context, *Pod, net.Conn)) {
	for {
		c, err := netutil.Accept(s.ctx, l, m.cfg.Log.With("pod", s.pod.Key()))
		if err != nil {
			return // the pod left: its listeners are closed
		}
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			// The handler's ctx ends at the drain deadline; closing the connection then
			// unblocks a handler stuck in I/O.
			stop := context.AfterFunc(s.ctx, func() { c.Close() })
			defer stop()
			h(s.ctx, s.pod, c)
		}()
	}
}

func markControl(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mesh.SocketMark)
	})
	return errors.Join(err, serr)
}

// listenIn opens the listeners inside the namespace.
func listenIn(netns *os.File, ports []int) ([]net.Listener, error) {
	return redirect.InNetNS(int(netns.Fd()), func() ([]net.Listener, error) {
		lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			return errors.Join(err, serr, markControl(network, address, c))
		}}
		lc.SetMultipathTCP(false)
		var ls []net.Listener
		for _, port := range ports {
			l, err := lc.Listen(context.Background(), "tcp", ":"+strconv.Itoa(port))
			if err != nil {
				for _, l := range ls {
					l.Close()
				}
				return nil, err
			}
			ls = append(ls, l)
		}
		return ls, nil
	})
}
