package zds

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
)

// Workload is an enrolled pod as the agent records it.
type Workload struct {
	Info        *zdsv1.WorkloadInfo
	NetnsCookie uint64
	// Netns is the pod's network namespace. Add keeps its own dup; the caller keeps (and closes)
	// this one. Nil means the agent could not open it (the pod is terminating, say): the workload
	// is sent as KeepWorkload, so a proxy keeps what it has.
	Netns *os.File
}

// Peer is a connected proxy.
type Peer struct {
	// ID numbers connections in the order they said Hello, from 1.
	ID    uint64
	Hello *zdsv1.Hello
	// PID and UID are the proxy process's, from SO_PEERCRED.
	PID int32
	UID uint32
}

// Server is the agent's end. It owns the desired set of workloads (and a dup of each one's netns
// fd) and keeps every connected proxy in step with it.
type Server struct {
	cfg ServerConfig
	log *slog.Logger

	// mu is held while the set changes and its messages are queued, and while a new connection
	// is registered and its replay queued: so each connection sees every change exactly once,
	// either in its replay or after it.
	mu        sync.Mutex
	workloads map[string]*record
	conns     map[*proxyConn]struct{}
	lastID    uint64
	running   bool
	closed    bool
}

type record struct {
	info   *zdsv1.WorkloadInfo
	cookie uint64
	netns  *os.File // nil: sent as KeepWorkload
	data   []byte   // the encoded AgentMessage
}

// NewServer returns a Server for a validated cfg. It has no side effects: Run listens.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("zds server config: %w", err)
	}
	return &Server{
		cfg:       cfg,
		log:       orDiscard(cfg.Log),
		workloads: make(map[string]*record),
		conns:     make(map[*proxyConn]struct{}),
	}, nil
}

// Add records w (replacing any record of the same uid) and sends it to every connected proxy,
// waiting for each one's ack, ctx, or the AckTimeout. With no proxy connected it returns
// ErrNoProxy; the record stays and is replayed when one connects. A proxy's refusal is an
// *AckError; a proxy that went away before acking, ErrProxyGone; several are joined.
func (s *Server) Add(ctx context.Context, w Workload) error {
	if w.Info.GetUid() == "" {
		return errors.New("zds add: workload without uid")
	}
	r := &record{info: proto.CloneOf(w.Info), cookie: w.NetnsCookie}
	m := &zdsv1.AgentMessage{Payload: &zdsv1.AgentMessage_Keep{Keep: &zdsv1.KeepWorkload{Uid: r.info.Uid}}}
	if w.Netns != nil {
		m.Payload = &zdsv1.AgentMessage_Add{Add: &zdsv1.AddWorkload{Workload: r.info, NetnsCookie: r.cookie}}
	}
	var err error
	if r.data, err = encode(m); err != nil {
		return fmt.Errorf("zds add %s: %w", r.info.Uid, err)
	}
	if w.Netns != nil {
		if r.netns, err = dupFile(w.Netns); err != nil {
			return fmt.Errorf("zds add %s: dup netns: %w", r.info.Uid, err)
		}
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		r.close()
		return ErrClosed
	}
	if old := s.workloads[r.info.Uid]; old != nil {
		old.close()
	}
	s.workloads[r.info.Uid] = r
	waits := s.sendLocked(r.data, r.netns)
	s.mu.Unlock()
	return wait(ctx, waits)
}

// Del forgets the workload uid and tells every connected proxy to drop it, as Add does. It is
// sent even for a uid with no record: a proxy may hold it from an earlier agent.
func (s *Server) Del(ctx context.Context, uid string) error {
	if uid == "" {
		return errors.New("zds del: empty uid")
	}
	data, err := encode(&zdsv1.AgentMessage{Payload: &zdsv1.AgentMessage_Del{Del: &zdsv1.DelWorkload{Uid: uid}}})
	if err != nil {
		return fmt.Errorf("zds del %s: %w", uid, err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if old := s.workloads[uid]; old != nil {
		old.close()
		delete(s.workloads, uid)
	}
	waits := s.sendLocked(data, nil)
	s.mu.Unlock()
	return wait(ctx, waits)
}

// Workloads returns the uids recorded, sorted.
func (s *Server) Workloads() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.workloads))
}

// Proxies returns the connected proxies, by ID.
func (s *Server) Proxies() []Peer {
	s.mu.Lock()
	defer s.mu.Unlock()
	peers := make([]Peer, 0, len(s.conns))
	for c := range s.conns {
		peers = append(peers, c.peer)
	}
	slices.SortFunc(peers, func(a, b Peer) int { return cmp.Compare(a.ID, b.ID) })
	return peers
}

type pending struct {
	peer Peer
	done <-chan error
}

// sendLocked queues data (with a dup of fd, if any) on every connection.
func (s *Server) sendLocked(data []byte, fd *os.File) []pending {
	waits := make([]pending, 0, len(s.conns))
	for c := range s.conns {
		done := make(chan error, 1)
		req := &request{data: data, done: done}
		waits = append(waits, pending{peer: c.peer, done: done})
		if fd != nil {
			var err error
			if req.fd, err = dupFile(fd); err != nil {
				done <- fmt.Errorf("dup netns: %w", err)
				continue
			}
		}
		c.enqueue(req)
	}
	return waits
}

func wait(ctx context.Context, waits []pending) error {
	if len(waits) == 0 {
		return ErrNoProxy
	}
	var errs []error
	for _, w := range waits {
		select {
		case err := <-w.done:
			if err != nil {
				errs = append(errs, fmt.Errorf("proxy %d (pid %d): %w", w.peer.ID, w.peer.PID, err))
			}
		case <-ctx.Done():
			// The message stays queued: the record is what counts, and it is already changed.
			return ctx.Err()
		}
	}
	return errors.Join(errs...)
}

// register adds c and queues its replay: every record, then SnapshotSent.
func (s *Server) register(c *proxyConn, hello *zdsv1.Hello) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.lastID++
	c.peer.ID = s.lastID
	c.peer.Hello = hello
	s.conns[c] = struct{}{}
	for _, uid := range slices.Sorted(maps.Keys(s.workloads)) {
		r := s.workloads[uid]
		req := &request{data: r.data, replayUID: uid}
		if r.netns != nil {
			var err error
			if req.fd, err = dupFile(r.netns); err != nil {
				// Without its fd the Add would be malformed; report it and replay the rest.
				c.s.replayAck(uid, fmt.Errorf("dup netns: %w", err))
				continue
			}
		}
		c.enqueue(req)
	}
	c.enqueue(&request{data: snapshotSent})
	return true
}

func (s *Server) unregister(c *proxyConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) replayAck(uid string, err error) {
	if s.cfg.OnReplayAck != nil {
		s.cfg.OnReplayAck(uid, err)
	}
}

var snapshotSent, _ = proto.Marshal(&zdsv1.AgentMessage{Payload: &zdsv1.AgentMessage_SnapshotSent{SnapshotSent: &zdsv1.SnapshotSent{}}})

// Run listens on cfg.Path and serves proxies until ctx ends, then closes every connection,
// removes the socket, and closes the recorded netns fds: a Server runs once, and Add and Del
// return ErrClosed afterwards. Cancellation returns nil.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running || s.closed {
		s.mu.Unlock()
		return errors.New("zds: Run called twice")
	}
	s.running = true
	s.mu.Unlock()
	defer s.shutdown()

	ln, err := listen(s.cfg.Path)
	if err != nil {
		return fmt.Errorf("zds listen: %w", err)
	}
	mine, _ := os.Stat(s.cfg.Path)
	defer func() {
		ln.Close()
		// Remove the socket only if it is still ours, not a successor's.
		if cur, err := os.Stat(s.cfg.Path); err == nil && mine != nil && os.SameFile(mine, cur) {
			os.Remove(s.cfg.Path)
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	s.log.Info("zds: listening", "path", s.cfg.Path)
	for {
		uc, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// Out of fds and the like: transient, and the listener is still ours.
			s.log.Warn("zds: accept", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		wg.Go(func() { s.serve(ctx, uc) })
	}
}

// shutdown marks the server closed and releases its records' fds. Connections are gone by then.
func (s *Server) shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, r := range s.workloads {
		r.close()
	}
	clear(s.workloads)
}

func (r *record) close() {
	if r.netns != nil {
		r.netns.Close()
		r.netns = nil
	}
}

// dupFile returns a close-on-exec dup of f.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

func peerAttrs(p Peer) slog.Attr {
	return slog.Group("proxy", "id", p.ID, "pid", p.PID, "uid", p.UID, "node", p.Hello.GetNode())
}
