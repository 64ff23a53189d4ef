package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Keepalive finds a control plane that vanished without closing the connection (a node lost).
// istiod-lite permits pings every 10 s (istiod-lite/server).
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
)

// maxNACKReasons bounds the reasons listed in one NACK (and its log line): a push of thousands
// of bad resources must not make a message of megabytes.
const maxNACKReasons = 16

// Client keeps a Store up to date from istiod-lite. One Client writes to a Store.
type Client struct {
	cfg   Config
	store *Store
	log   *slog.Logger

	// Injected in tests.
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) bool // false: ctx ended first
	randN func(n int64) int64

	synced atomic.Bool

	mu    sync.Mutex
	stats Stats
}

// Stats describes the client for metrics and debug pages.
type Stats struct {
	// Connected: the current stream has received a response.
	Connected bool
	// Streams counts the streams that received a response (the first connect and reconnects).
	Streams uint64
	Types   map[string]TypeStats
}

// TypeStats describes one resource type.
type TypeStats struct {
	// Synced: a response of this type has been received (ever; it stays so across reconnects).
	Synced bool
	// LastACK is when a response of this type was last ACKed (zero: never).
	LastACK time.Time
	// NACKs counts responses of this type NACKed.
	NACKs uint64
	// Resources is how many the store holds.
	Resources int
}

// New returns a client that writes to store. It validates cfg and does nothing else.
func New(cfg Config, store *Store) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("xdsclient config: %w", err)
	}
	if store == nil {
		return nil, errors.New("xdsclient: nil store")
	}
	c := &Client{
		cfg:   cfg,
		store: store,
		log:   cfg.Log.With("component", "xdsclient"),
		now:   time.Now,
		sleep: sleepCtx,
		randN: rand.Int64N,
		stats: Stats{Types: map[string]TypeStats{}},
	}
	for _, t := range cfg.Types {
		c.stats.Types[t] = TypeStats{}
	}
	return c, nil
}

// Store returns the store the client writes to.
func (c *Client) Store() *Store { return c.store }

// Synced reports whether every subscribed type has received its first response (istiod-lite
// always answers the first request of a type, even with nothing). Once true it stays true:
// across reconnects the last good state keeps serving.
func (c *Client) Synced() bool { return c.synced.Load() }

// Stats returns a copy of the client's counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Types = make(map[string]TypeStats, len(c.stats.Types))
	for k, v := range c.stats.Types {
		s.Types[k] = v
	}
	return s
}

// Run connects to istiod-lite and applies what it pushes until ctx ends, reconnecting with
// backoff. It returns nil when ctx ends; nothing else ends it (an unauthenticated stream may
// succeed once the token rotates). The store keeps the last good state while istiod-lite is
// away and after Run returns: the data path goes on with what it knew (failing closed would cut
// every connection of the node for a control-plane outage).
func (c *Client) Run(ctx context.Context) error {
	delay := c.cfg.Backoff.Initial
	for {
		responded, err := c.stream(ctx)
		c.mu.Lock()
		c.stats.Connected = false
		c.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		if responded {
			delay = c.cfg.Backoff.Initial
		}
		wait := jitter(delay, c.randN)
		c.log.Warn("xds stream ended, keeping the last good state", "addr", c.cfg.Addr, "err", err, "retry_in", wait)
		if !c.sleep(ctx, wait) {
			return nil
		}
		delay = min(2*delay, c.cfg.Backoff.Max)
	}
}

// jitter returns a wait in [d/2, d].
func jitter(d time.Duration, randN func(int64) int64) time.Duration {
	half := int64(d / 2)
	return time.Duration(half + randN(int64(d)-half+1))
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// bearer sends the token read at (re)connect on the stream.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

func readToken(path string) (bearer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("read token: %s is empty", path)
	}
	return bearer(t), nil
}

// stream runs one connection and stream until it fails or ctx ends. It reports whether a
// response was received (the connection was good, so the backoff restarts).
//
// Each attempt dials anew: the one backoff that governs retries is Run's, and a replaced
// istiod-lite is found by a fresh DNS lookup.
func (c *Client) stream(ctx context.Context) (responded bool, err error) {
	tok, err := readToken(c.cfg.TokenFile)
	if err != nil {
		return false, err
	}
	conn, err := grpc.NewClient(c.cfg.Addr,
		grpc.WithTransportCredentials(credentials.NewTLS(c.cfg.TLS)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(c.cfg.MaxRecvMsgSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
	)
	if err != nil {
		return false, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := conn.NewStream(ctx, &grpc.StreamDesc{StreamName: "DeltaAggregatedResources", ServerStreams: true, ClientStreams: true},
		adsMethod, grpc.PerRPCCredentials(tok), grpc.ForceCodecV2(codec{}))
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}

	// One wildcard subscription per type, listing what is held so that only changes come back.
	st := c.store.Load()
	for i, typ := range c.cfg.Types {
		req := &deltaRequest{typeURL: typ, subscribe: []string{"*"}, initialResourceVersions: st.versions(typ)}
		if i == 0 {
			req.nodeID = c.cfg.Node
		}
		if err := s.SendMsg(req); err != nil {
			return false, fmt.Errorf("subscribe: %w", err)
		}
	}
	for {
		var resp *deltaResponse
		if err := s.RecvMsg(&resp); err != nil {
			return responded, fmt.Errorf("receive: %w", err)
		}
		if !responded {
			responded = true
			c.mu.Lock()
			c.stats.Connected = true
			c.stats.Streams++
			c.mu.Unlock()
			c.log.Info("xds stream established", "addr", c.cfg.Addr)
		}
		if err := s.SendMsg(c.handle(resp)); err != nil {
			return responded, fmt.Errorf("send ack: %w", err)
		}
	}
}

// handle applies resp to the store and returns its ACK or NACK.
func (c *Client) handle(resp *deltaResponse) *deltaRequest {
	typ := resp.typeURL
	var rej []rejection
	var held int
	if !slices.Contains(c.cfg.Types, typ) {
		rej = []rejection{{err: fmt.Errorf("type %q not subscribed to", typ)}}
	} else {
		prev := c.store.Load()
		var next *State
		next, rej = apply(prev, resp, c.cfg.Validator)
		if next != prev {
			c.store.publish(next)
		}
		held = next.Len(typ)
	}

	c.mu.Lock()
	if ts, ok := c.stats.Types[typ]; ok {
		ts.Synced = true
		ts.Resources = held
		if len(rej) == 0 {
			ts.LastACK = c.now()
		} else {
			ts.NACKs++
		}
		c.stats.Types[typ] = ts
		all := true
		for _, ts := range c.stats.Types {
			all = all && ts.Synced
		}
		if all {
			c.synced.Store(true)
		}
	}
	c.mu.Unlock()

	req := &deltaRequest{typeURL: typ, responseNonce: resp.nonce}
	if len(rej) == 0 {
		return req
	}
	names, reason := describe(rej)
	c.log.Warn("rejected configuration, keeping the previous version of what was rejected",
		"type", typ, "nonce", resp.nonce, "resources", names, "reason", reason)
	req.errorCode, req.errorMessage = int32(codes.InvalidArgument), reason
	return req
}

// describe returns the names refused and one reason naming each (both bounded).
func describe(rej []rejection) ([]string, string) {
	slices.SortFunc(rej, func(a, b rejection) int { return strings.Compare(a.name, b.name) })
	var names []string
	var b strings.Builder
	for i, r := range rej {
		if i == maxNACKReasons {
			fmt.Fprintf(&b, "; and %d more", len(rej)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(r.String())
		if r.name != "" {
			names = append(names, r.name)
		}
	}
	return names, b.String()
}
