package zds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
)

// Handler applies the agent's messages on the proxy. Calls come one at a time, in the order the
// agent sent them; each one's error (nil for success) is what the agent's Add or Del returns.
type Handler interface {
	// AddWorkload starts serving w in the network namespace netns, or updates it. netns belongs
	// to the handler whatever it returns: it must close it.
	AddWorkload(ctx context.Context, w *zdsv1.WorkloadInfo, netnsCookie uint64, netns *os.File) error
	// KeepWorkload: keep serving uid as it is (the agent could not reopen its netns).
	KeepWorkload(uid string) error
	// DelWorkload stops serving uid. An unknown uid is not an error.
	DelWorkload(uid string) error
	// SnapshotDone ends a replay: replayed holds every uid added or kept on this connection
	// before it (including those whose AddWorkload failed: the agent still wants them), and the
	// proxy drops every workload not in it.
	SnapshotDone(replayed map[string]bool)
}

// writeTimeout bounds sending Hello or an ack; the agent reads them as they come.
const writeTimeout = 10 * time.Second

const maxAckError = 4 << 10

// RunClient connects to the agent at cfg.Path, says Hello, and hands each message to cfg.Handler
// in order, acking each. When the connection fails it reconnects, with backoff, until ctx ends.
// Cancellation returns nil; an invalid cfg is the only error.
func RunClient(ctx context.Context, cfg ClientConfig) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("zds client config: %w", err)
	}
	log := orDiscard(cfg.Log)
	delay := cfg.Backoff.Initial
	for {
		if synced := runClientConn(ctx, cfg, log); synced {
			delay = cfg.Backoff.Initial
		}
		if ctx.Err() != nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, cfg.Backoff.Max)
	}
}

// runClientConn runs one connection to its end, logging why it ended. It reports whether the
// connection got through a replay, which resets the backoff.
func runClientConn(ctx context.Context, cfg ClientConfig, log *slog.Logger) (synced bool) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", cfg.Path)
	if err != nil {
		if ctx.Err() == nil {
			log.Info("zds: cannot reach the agent", "path", cfg.Path, "err", err)
		}
		return false
	}
	uc := nc.(*net.UnixConn)
	defer uc.Close()
	stop := context.AfterFunc(ctx, func() { uc.Close() })
	defer stop()

	pid, uid, _ := peerCred(uc)
	log = log.With(slog.Group("agent", "pid", pid, "uid", uid))
	cc := &clientConn{pc: newPacketConn(uc), h: cfg.Handler, replayed: make(map[string]bool)}
	err = cc.run(ctx, cfg.Node)
	switch {
	case ctx.Err() != nil:
	case errors.Is(err, errMalformed):
		log.Warn("zds: closing connection to the agent", "err", err)
	default:
		log.Warn("zds: connection to the agent lost", "err", err)
	}
	return cc.replayed == nil
}

type clientConn struct {
	pc *packetConn
	h  Handler
	// replayed collects the uids added or kept until SnapshotSent; nil after it.
	replayed map[string]bool
}

func (c *clientConn) run(ctx context.Context, node string) error {
	hello, err := encode(&zdsv1.ProxyMessage{Payload: &zdsv1.ProxyMessage_Hello{Hello: &zdsv1.Hello{Version: Version, Node: node}}})
	if err != nil {
		return err
	}
	if err := c.pc.write(hello, nil, time.Now().Add(writeTimeout)); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	for {
		b, fds, err := c.pc.read()
		if err != nil {
			return err
		}
		m, netns, err := decodeAgent(b, fds)
		if err != nil {
			return err
		}
		herr, err := c.handle(ctx, m, netns)
		if err != nil {
			return err
		}
		data, err := encode(&zdsv1.ProxyMessage{Payload: &zdsv1.ProxyMessage_Ack{Ack: &zdsv1.Ack{Error: ackText(herr)}}})
		if err != nil {
			return err
		}
		if err := c.pc.write(data, nil, time.Now().Add(writeTimeout)); err != nil {
			return fmt.Errorf("send ack: %w", err)
		}
	}
}

// ackText is err as an Ack carries it: not empty, valid UTF-8 (proto3 strings must be), and
// short enough for a packet.
func ackText(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > maxAckError {
		s = s[:maxAckError]
	}
	if s = strings.ToValidUTF8(s, "\uFFFD"); s == "" {
		s = "error"
	}
	return s
}

// handle applies m. The first error is the handler's (to ack); the second breaks the connection.
func (c *clientConn) handle(ctx context.Context, m *zdsv1.AgentMessage, netns *os.File) (error, error) {
	switch p := m.Payload.(type) {
	case *zdsv1.AgentMessage_Add:
		if c.replayed != nil {
			c.replayed[p.Add.Workload.Uid] = true
		}
		return c.h.AddWorkload(ctx, p.Add.Workload, p.Add.NetnsCookie, netns), nil
	case *zdsv1.AgentMessage_Keep:
		if c.replayed != nil {
			c.replayed[p.Keep.Uid] = true
		}
		return c.h.KeepWorkload(p.Keep.Uid), nil
	case *zdsv1.AgentMessage_Del:
		delete(c.replayed, p.Del.Uid)
		return c.h.DelWorkload(p.Del.Uid), nil
	case *zdsv1.AgentMessage_SnapshotSent:
		if c.replayed == nil {
			return nil, malformed("second SnapshotSent")
		}
		replayed := c.replayed
		c.replayed = nil
		c.h.SnapshotDone(replayed)
		return nil, nil
	}
	return nil, malformed("unknown payload %T", m.Payload) // decodeAgent lets none through
}
