// Package xds serves model snapshots to proxies over the delta (incremental) xDS protocol
// (envoy.service.discovery.v3 DeltaAggregatedResources) with the resource types of api/. It owns
// the connected streams and what each has been sent and has acknowledged; it does not build
// snapshots (model, controller) and does not authenticate tokens itself (authn).
package xds

import (
	"errors"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	"github.com/ambient-mesh/ambient/istiod-lite/authn"
)

// bulkResources makes a response "bulk": it waits for a slot among Config.BulkInFlight.
const bulkResources = 256

// Config configures the server.
type Config struct {
	// ZtunnelServiceAccounts are "<namespace>/<name>" of the service accounts ztunnels run as.
	ZtunnelServiceAccounts []string
	// Waypoint reports whether a service account is a waypoint's (that of a Gateway of class
	// istio-waypoint), and names the waypoint as workloads and services bound to it do:
	// "<namespace>/<hostname>" of its Service. It is asked once the first snapshot is out. Nil:
	// no waypoints.
	Waypoint func(namespace, serviceAccount string) (waypoint string, ok bool)
	// BulkInFlight bounds the bulk responses in flight at once (0: 8); BulkTimeout frees the
	// slot of one its proxy does not answer (0: 30 s).
	BulkInFlight int
	BulkTimeout  time.Duration
	// Clock times bulk responses (nil: the wall clock).
	Clock clock.Clock
}

// Server is the delta xDS server.
type Server struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer

	log         *slog.Logger
	auth        authn.Authenticator
	metrics     *Metrics
	ztunnel     map[string]bool
	waypoint    func(namespace, serviceAccount string) (string, bool)
	bulkTimeout time.Duration
	clock       clock.Clock
	// published is closed by the first Update: a stream's role is decided only then, when the
	// caches it is decided from are complete.
	published chan struct{}

	// bulk bounds the large responses (a proxy's first push: every workload of the cluster) that
	// are in flight at once, from marshalling until the proxy answers them: after a restart every
	// proxy reconnects at once, and their buffered first pushes would otherwise all be in memory
	// together (about 3.5 MB each at 10,000 pods).
	bulk chan struct{}

	mu         sync.Mutex
	snap       *Snapshot
	generation uint64
	conns      map[*conn]struct{}
}

// New returns a server that authenticates streams with auth. Until the first Update, streams wait.
func New(log *slog.Logger, cfg Config, auth authn.Authenticator, m *Metrics) *Server {
	z := map[string]bool{}
	for _, sa := range cfg.ZtunnelServiceAccounts {
		z[sa] = true
	}
	if cfg.BulkInFlight <= 0 {
		cfg.BulkInFlight = 8
	}
	if cfg.BulkTimeout <= 0 {
		cfg.BulkTimeout = 30 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Waypoint == nil {
		cfg.Waypoint = func(string, string) (string, bool) { return "", false }
	}
	return &Server{
		log:         log.With("component", "xds"),
		auth:        auth,
		metrics:     m,
		ztunnel:     z,
		waypoint:    cfg.Waypoint,
		bulkTimeout: cfg.BulkTimeout,
		clock:       cfg.Clock,
		published:   make(chan struct{}),
		conns:       map[*conn]struct{}{},
		bulk:        make(chan struct{}, cfg.BulkInFlight),
	}
}

// conn is one connected stream.
type conn struct {
	proxy       *Proxy
	connectedAt time.Time
	wake        chan struct{}

	mu     sync.Mutex
	dirty  map[string]map[string]struct{} // accumulated changes since the last push; nil: everything
	full   bool
	status map[string]TypeStatus
}

// Update publishes a new snapshot. Connected streams receive only what changed for them.
func (s *Server) Update(snap *Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snap == nil {
		close(s.published)
	}
	s.generation++
	snap.version = strconv.FormatUint(s.generation, 10)
	var d map[string]map[string]struct{}
	if s.snap != nil {
		d = changed(s.snap, snap)
	}
	s.snap = snap
	for c := range s.conns {
		c.mu.Lock()
		switch {
		case d == nil:
			c.full = true
		case !c.full:
			if c.dirty == nil {
				c.dirty = map[string]map[string]struct{}{}
			}
			for typ, names := range d {
				if c.dirty[typ] == nil {
					c.dirty[typ] = map[string]struct{}{}
				}
				for n := range names {
					c.dirty[typ][n] = struct{}{}
				}
			}
		}
		c.mu.Unlock()
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// Ready reports whether a snapshot has been published.
func (s *Server) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap != nil
}

// Snapshot returns the current snapshot (nil before the first Update).
func (s *Server) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// Clients lists connected clients, sorted by ID.
func (s *Server) Clients() []ClientStatus {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	out := make([]ClientStatus, 0, len(conns))
	for _, c := range conns {
		c.mu.Lock()
		out = append(out, ClientStatus{Proxy: *c.proxy, ConnectedAt: c.connectedAt, Types: c.status})
		c.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// StreamAggregatedResources is the state-of-the-world protocol, which this server does not speak.
func (s *Server) StreamAggregatedResources(discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return status.Error(codes.Unimplemented, "only the delta protocol (DeltaAggregatedResources) is served")
}

// DeltaAggregatedResources serves one client stream.
func (s *Server) DeltaAggregatedResources(gs discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	ctx := gs.Context()
	caller, err := s.auth.Authenticate(ctx)
	if err != nil {
		switch {
		case errors.Is(err, authn.ErrUnauthenticated):
			return status.Error(codes.Unauthenticated, err.Error())
		case errors.Is(err, authn.ErrTooManyReviews):
			return status.Error(codes.ResourceExhausted, err.Error())
		}
		return status.Error(codes.Unavailable, err.Error())
	}
	select {
	case <-s.published:
	case <-ctx.Done():
		return nil
	}
	proxy, err := s.role(caller)
	if err != nil {
		return err
	}
	first, err := gs.Recv()
	if err != nil {
		return nil
	}
	proxy.ID = first.GetNode().GetId()
	if proxy.ID == "" {
		proxy.ID = caller.Namespace + "/" + caller.PodName
	}
	log := s.log.With("proxy", proxy.ID, "role", proxy.Role, "node", proxy.Node)

	c := &conn{proxy: proxy, connectedAt: time.Now(), wake: make(chan struct{}, 1), full: true}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	s.metrics.connected.Inc()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.metrics.connected.Dec()
	}()
	log.Info("client connected")

	reqs := make(chan *discoveryv3.DeltaDiscoveryRequest, 16)
	recvErr := make(chan error, 1)
	reqs <- first
	go func() {
		for {
			req, err := gs.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	st := newStream(proxy)
	var snap *Snapshot // what this stream last worked against
	// The bulk slot this stream holds: taken (reserve) before a response that will likely be large
	// is even built, so that proxies waiting for one do not hold their built responses in memory
	// meanwhile; bound to the nonce of the latest bulk response sent; freed with that nonce: when
	// the response is answered, when the stream forgets the nonce (superseded past maxPending),
	// or when bulkTimeout passes without an answer (the nonce is then forgotten, so a late answer
	// is stale) — and freed when no bulk response used it, and on exit. A stream holds at most
	// one, and its later bulk responses ride on it only while it is held: once freed, the next
	// takes a slot again, so the bound holds for clients that never answer. A stream waiting for
	// a slot never holds one, so waiting cannot deadlock.
	var slot struct {
		held  bool
		nonce string // "": not yet bound to a response
		timer clock.Timer
	}
	var slotExpired <-chan time.Time // the timer's channel while one runs
	release := func() {
		if slot.timer != nil {
			slot.timer.Stop()
		}
		if slot.held {
			<-s.bulk
			s.metrics.bulkInUse.Dec()
		}
		slot.held, slot.nonce, slot.timer, slotExpired = false, "", nil, nil
	}
	defer release()
	reserve := func() error {
		if slot.held {
			return nil
		}
		s.metrics.bulkWaiting.Inc()
		defer s.metrics.bulkWaiting.Dec()
		select {
		case s.bulk <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.metrics.bulkInUse.Inc()
		slot.held = true
		return nil
	}
	// unreserve frees a slot taken for a response that turned out small (or none), and one
	// whose nonce the stream no longer waits for.
	unreserve := func() {
		if slot.nonce == "" || !st.isPending(slot.nonce) {
			release()
		}
	}
	send := func(r *response, since time.Time) error {
		if len(r.res) >= bulkResources {
			// The slot is bound to the latest bulk response: the client holds it until it
			// answers that one (answers come in order).
			if err := reserve(); err != nil {
				return err
			}
			if slot.timer != nil {
				slot.timer.Stop()
			}
			slot.nonce = r.nonce
			slot.timer = s.clock.NewTimer(s.bulkTimeout)
			slotExpired = slot.timer.C()
		}
		if err := gs.SendMsg(r); err != nil { // pre-encoded: see codec.go
			return err
		}
		s.metrics.pushes.WithLabelValues(shortType(r.typ)).Inc()
		s.metrics.resourcesSent.WithLabelValues(shortType(r.typ)).Add(float64(len(r.res) + len(r.removed)))
		if !since.IsZero() {
			s.metrics.pushLatency.Observe(time.Since(since).Seconds())
		}
		return nil
	}
	var queued []*discoveryv3.DeltaDiscoveryRequest
	for {
		// Requests wait until there is a snapshot to answer them with.
		if snap != nil {
			for _, req := range queued {
				if st.mayBeBulk(req, snap) {
					if err := reserve(); err != nil {
						return nil
					}
				}
				resp, nack := st.onRequest(req, snap)
				if nack != nil {
					s.metrics.nacks.WithLabelValues(shortType(nack.TypeURL)).Inc()
					log.Warn("client rejected configuration", "type", nack.TypeURL, "nonce", nack.Nonce,
						"reason", nack.Reason, "resources", nack.Resources)
				}
				if resp != nil {
					if err := send(resp, time.Time{}); err != nil {
						return nil
					}
				}
				unreserve()
			}
			queued = queued[:0]
			c.mu.Lock()
			c.status = st.status()
			c.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-slotExpired:
			log.Warn("bulk response not answered in time; its slot is freed and its nonce forgotten", "nonce", slot.nonce, "after", s.bulkTimeout)
			st.forget(slot.nonce)
			release()
		case err := <-recvErr:
			if err == io.EOF {
				log.Info("client disconnected")
				return nil
			}
			log.Info("client stream ended", "err", err)
			return nil
		case req := <-reqs:
			queued = append(queued, req)
			if snap == nil {
				// The requests will be answered from this snapshot; changes after it accumulate
				// from here on. Both under s.mu, so no Update falls between them.
				s.mu.Lock()
				snap = s.snap
				c.mu.Lock()
				c.full, c.dirty = false, nil
				c.mu.Unlock()
				s.mu.Unlock()
			}
		case <-c.wake:
			// The snapshot and the changes leading to it are taken together (Update holds s.mu
			// while it records changes), so dirty describes exactly snap -> latest.
			s.mu.Lock()
			latest := s.snap
			c.mu.Lock()
			dirty, full := c.dirty, c.full
			c.dirty, c.full = nil, false
			c.mu.Unlock()
			s.mu.Unlock()
			if latest == nil || latest == snap {
				continue
			}
			if full || snap == nil {
				dirty = nil // everything
			} else if dirty == nil {
				dirty = map[string]map[string]struct{}{} // nothing recorded: only authorizations are re-checked
			}
			if mayBeBulk(dirty) {
				if err := reserve(); err != nil {
					return nil
				}
			}
			snap = latest
			for _, r := range st.onPush(snap, dirty) {
				if err := send(r, snap.created); err != nil {
					return nil
				}
			}
			unreserve()
		}
	}
}

// role decides what an authenticated caller is: a ztunnel (its service account is a ztunnel's,
// and its token is bound to a pod on a node, which scopes its policy), or a waypoint (its
// service account is a waypoint Gateway's). Any other caller is refused: the configuration lists
// every workload of the mesh, its addresses and identities, which is no business of an
// application pod.
func (s *Server) role(caller *authn.Caller) (*Proxy, error) {
	sa := caller.Namespace + "/" + caller.ServiceAccount
	proxy := &Proxy{Node: caller.NodeName, Namespace: caller.Namespace}
	if s.ztunnel[sa] {
		if proxy.Node == "" {
			// Without a bound token the node is unknown and policy cannot be scoped: refuse
			// rather than send another node's policy or none.
			return nil, status.Error(codes.PermissionDenied, "ztunnel token is not bound to a pod on a node")
		}
		proxy.Role = RoleZtunnel
		return proxy, nil
	}
	if wp, ok := s.waypoint(caller.Namespace, caller.ServiceAccount); ok {
		proxy.Role, proxy.Waypoint = RoleWaypoint, wp
		return proxy, nil
	}
	return nil, status.Errorf(codes.PermissionDenied, "service account %s is neither a ztunnel's nor a waypoint's", sa)
}

// mayBeBulk reports whether a push of the changes dirty (nil: everything) will likely carry
// bulkResources or more resources of a type.
func mayBeBulk(dirty map[string]map[string]struct{}) bool {
	if dirty == nil {
		return true
	}
	for _, names := range dirty {
		if len(names) >= bulkResources {
			return true
		}
	}
	return false
}

func shortType(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}
