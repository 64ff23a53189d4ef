package xds

import (
	"maps"
	"math"
	"slices"
	"strconv"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// Role is what kind of proxy a client is; it decides what the client may see.
type Role string

const (
	RoleZtunnel Role = "ztunnel"
	// RoleWaypoint is a waypoint proxy: the service account of a Gateway of class
	// istio-waypoint.
	RoleWaypoint Role = "waypoint"
)

// Proxy is an authenticated client.
type Proxy struct {
	// ID is the client's node.id, for logs and the admin page.
	ID   string
	Role Role
	// Node is the Kubernetes node the client runs on (from its bound token).
	Node      string
	Namespace string
	// Waypoint names a waypoint's Service, "<namespace>/<hostname>", as workloads and services
	// bound to it name it.
	Waypoint string `json:",omitempty"`
}

// watch is the subscription to one resource type on one stream.
//
// What the client holds is not stored per resource: after every response the client holds exactly
// the resources of the stream's base snapshot that are in scope (subscribed to and visible to
// it), at the base's versions. So a stream costs memory in proportion to its explicit
// subscriptions, not to the size of the cluster (100 ztunnels each holding 10,000 workloads would
// otherwise keep a million map entries). A NACK does not change this: the client keeps its last
// good version, and the server does not resend the same content (see onRequest).
type watch struct {
	wildcard bool
	names    map[string]bool // explicit subscriptions
	acked    int             // resources held as of the last ACKed response, for the admin page
	// ackedVersion is the snapshot version of the last ACKed response.
	ackedVersion string
	lastNACK     string
}

func (w *watch) subscribed(name string) bool { return w.wildcard || w.names[name] }

// pendingResponse is a response awaiting ACK or NACK.
type pendingResponse struct {
	typ     string
	version string
	res     []*resource // the resources sent (sorted, as responses are), for the log of a NACK
	held    int         // resources the client holds once it applies the response
}

// NACK describes a rejected response, for logs and metrics.
type NACK struct {
	TypeURL, Nonce, Reason string
	Resources              []string
}

// stream is the protocol state of one delta xDS stream. It is a pure state machine: requests and
// snapshots in, responses out; the gRPC plumbing is in server.go. It is used by one goroutine.
type stream struct {
	proxy   *Proxy
	watches map[string]*watch
	pending map[string]*pendingResponse
	nonce   uint64
	// base is the snapshot the client has been brought to (nil before the first response).
	base *Snapshot
}

func newStream(p *Proxy) *stream {
	return &stream{proxy: p, watches: map[string]*watch{}, pending: map[string]*pendingResponse{}}
}

// known reports whether typ is a type this server serves.
func known(typ string) bool {
	switch typ {
	case TypeWorkload, TypeService, TypeAuthorization, TypeTrustBundle, TypeServiceRoutes:
		return true
	}
	return false
}

// held returns the version of resource name the client holds under w's current scope ("" for
// none).
func (s *stream) held(typ string, w *watch, name string) string {
	if s.base == nil || !w.subscribed(name) || !s.base.visible(s.proxy, typ, name) {
		return ""
	}
	if r, ok := s.base.resources[typ][name]; ok {
		return r.version
	}
	return ""
}

// holding adds to consider every resource the client holds of typ, at its version.
func (s *stream) holding(typ string, w *watch, consider map[string]string) {
	if s.base == nil {
		return
	}
	if w.wildcard {
		for n := range s.base.resources[typ] {
			if v := s.held(typ, w, n); v != "" {
				consider[n] = v
			}
		}
		return
	}
	for n := range w.names {
		if v := s.held(typ, w, n); v != "" {
			consider[n] = v
		}
	}
}

// count returns how many resources of typ the client holds once brought to snap.
func (s *stream) count(typ string, w *watch, snap *Snapshot) int {
	if w.wildcard && typ != TypeAuthorization && s.proxy.Role == RoleZtunnel {
		return len(snap.resources[typ]) // a ztunnel sees every workload and service
	}
	n := 0
	if w.wildcard {
		for name := range snap.resources[typ] {
			if snap.visible(s.proxy, typ, name) {
				n++
			}
		}
		return n
	}
	for name := range w.names {
		if _, ok := snap.resources[typ][name]; ok && snap.visible(s.proxy, typ, name) {
			n++
		}
	}
	return n
}

// mayBeBulk reports whether answering req against snap will likely send bulkResources or more
// resources: a first or wildcard subscription to a large type, or many names.
func (s *stream) mayBeBulk(req *discoveryv3.DeltaDiscoveryRequest, snap *Snapshot) bool {
	typ := req.GetTypeUrl()
	if !known(typ) || snap == nil {
		return false
	}
	subs := req.GetResourceNamesSubscribe()
	if len(subs) >= bulkResources {
		return true
	}
	if len(snap.resources[typ]) < bulkResources {
		return false
	}
	_, watched := s.watches[typ]
	return (!watched && len(subs) == 0) || slices.Contains(subs, "*")
}

// onRequest processes a request against snap, which must be the snapshot the stream last worked
// against (the base of its last response, or any snapshot before the first). It returns the
// response to send (nil for none) and, for a NACK, what was rejected.
func (s *stream) onRequest(req *discoveryv3.DeltaDiscoveryRequest, snap *Snapshot) (*response, *NACK) {
	typ := req.GetTypeUrl()
	if !known(typ) {
		return nil, nil // unknown types are ignored, as xDS servers do
	}
	// Until the first response the client holds nothing the stream knows of; after it, snap is
	// the base (server.go pushes and answers requests against the same snapshot).
	if s.base == nil {
		s.base = snap
	}
	var nack *NACK
	if nonce := req.GetResponseNonce(); nonce != "" {
		if p, ok := s.pending[nonce]; ok && p.typ == typ {
			delete(s.pending, nonce)
			w := s.watches[typ]
			if d := req.GetErrorDetail(); d != nil {
				// The client keeps its last good version of what it rejected. We do not resend:
				// the same content would be rejected again; the next change of a resource does.
				nack = &NACK{TypeURL: typ, Nonce: nonce, Reason: d.GetMessage(), Resources: resourceNames(p.res)}
				w.lastNACK = d.GetMessage()
			} else {
				w.acked = p.held
				w.ackedVersion = p.version
			}
		}
		// A stale nonce (superseded, or from before a reconnect) is ignored.
	}

	// consider maps each name whose state may change to the version the client holds now ("" for
	// none), taken before the subscription changes.
	consider := map[string]string{}
	w, ok := s.watches[typ]
	if !ok {
		w = &watch{names: map[string]bool{}}
		s.watches[typ] = w
		subs := req.GetResourceNamesSubscribe()
		w.wildcard = len(subs) == 0 // legacy wildcard: an empty first request
		for _, n := range subs {
			if n == "*" {
				w.wildcard = true
			} else {
				w.names[n] = true
			}
		}
		if w.wildcard && len(w.names) == 0 && len(req.GetInitialResourceVersions()) == 0 {
			// The common first request of a proxy: everything visible, in the snapshot's order.
			resp := s.generateAll(typ, w, snap)
			if resp == nil {
				resp = s.respond(typ, w, snap, nil, nil)
			}
			return resp, nack
		}
		for n := range snap.resources[typ] {
			consider[n] = ""
		}
		for n := range w.names {
			consider[n] = ""
		}
		// What the client already holds (reconnect) is not sent again; its versions are content
		// hashes, so equal means identical.
		maps.Copy(consider, req.GetInitialResourceVersions())
		resp := s.generate(typ, w, snap, consider, w.names)
		if resp == nil {
			// Always answer a new subscription, so the client knows it is in sync.
			resp = s.respond(typ, w, snap, nil, nil)
		}
		return resp, nack
	}

	// A name unsubscribed from by name is forgotten by the client itself: no removal is sent, and
	// if the same request subscribes to it again, it is sent again.
	forgot := map[string]bool{}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		switch {
		case n == "*" && w.wildcard:
			// What the client holds through the wildcard alone is removed.
			s.holding(typ, w, consider)
		case n != "*" && !w.wildcard:
			forgot[n] = true
		}
	}
	cur := func(n string) string {
		if forgot[n] {
			return ""
		}
		return s.held(typ, w, n)
	}
	newNames := map[string]bool{}
	for _, n := range req.GetResourceNamesSubscribe() {
		if n == "*" {
			for name := range snap.resources[typ] {
				consider[name] = cur(name)
			}
			continue
		}
		newNames[n] = true
		consider[n] = cur(n)
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if n == "*" {
			w.wildcard = false
		} else {
			delete(w.names, n)
		}
	}
	for n := range newNames {
		w.names[n] = true
	}
	if slices.Contains(req.GetResourceNamesSubscribe(), "*") {
		w.wildcard = true
	}
	if len(consider) == 0 {
		return nil, nack
	}
	return s.generate(typ, w, snap, consider, newNames), nack
}

// onPush computes the responses that bring the client from the stream's base to snap, given
// the names that changed per type between the two (nil: consider everything). Authorizations are
// always re-evaluated in full (see changed).
func (s *stream) onPush(snap *Snapshot, dirty map[string]map[string]struct{}) []*response {
	var out []*response
	for _, typ := range []string{TypeTrustBundle, TypeService, TypeWorkload, TypeAuthorization, TypeServiceRoutes} {
		w, ok := s.watches[typ]
		if !ok {
			continue
		}
		consider := map[string]string{}
		if dirty == nil || typ == TypeAuthorization {
			for n := range snap.resources[typ] {
				consider[n] = s.held(typ, w, n)
			}
			s.holding(typ, w, consider)
		} else {
			for n := range dirty[typ] {
				consider[n] = s.held(typ, w, n)
			}
			// What the proxy may see can change without the resource changing.
			for _, set := range []map[string]bool{s.base.scoped(s.proxy, typ), snap.scoped(s.proxy, typ)} {
				for n := range set {
					if _, ok := consider[n]; !ok {
						consider[n] = s.held(typ, w, n)
					}
				}
			}
		}
		if len(consider) == 0 {
			continue // nothing of this type changed
		}
		if r := s.generate(typ, w, snap, consider, nil); r != nil {
			out = append(out, r)
		}
	}
	s.base = snap
	return out
}

// generate builds the response that brings the client from the versions in consider (what it
// holds of those names) to snap; the caller moves the stream's base to snap. consider must hold every
// name whose state differs between the base and snap. Names just subscribed to by name (fresh)
// that do not exist (or that the proxy may not see) are listed as removed, so the client knows
// not to wait for them. It returns nil when nothing differs.
func (s *stream) generate(typ string, w *watch, snap *Snapshot, consider map[string]string, fresh map[string]bool) *response {
	var res []*resource
	var removed []string
	for _, n := range slices.Sorted(maps.Keys(consider)) {
		cur := consider[n]
		r, ok := snap.resources[typ][n]
		if ok && w.subscribed(n) && snap.visible(s.proxy, typ, n) {
			if cur != r.version {
				res = append(res, r)
			}
			continue
		}
		if cur != "" || (fresh[n] && w.subscribed(n)) {
			removed = append(removed, n)
		}
	}
	if len(res) == 0 && len(removed) == 0 {
		return nil
	}
	return s.respond(typ, w, snap, res, removed)
}

// generateAll builds the response of a first wildcard subscription from a client that holds
// nothing: every visible resource of typ. It returns nil when there is none.
func (s *stream) generateAll(typ string, w *watch, snap *Snapshot) *response {
	names := snap.sortedNames(typ)
	res := make([]*resource, 0, len(names))
	for _, n := range names {
		if snap.visible(s.proxy, typ, n) {
			res = append(res, snap.resources[typ][n])
		}
	}
	if len(res) == 0 {
		return nil
	}
	return s.respond(typ, w, snap, res, nil)
}

func (s *stream) respond(typ string, w *watch, snap *Snapshot, res []*resource, removed []string) *response {
	s.nonce++
	nonce := strconv.FormatUint(s.nonce, 10)
	s.pending[nonce] = &pendingResponse{typ: typ, version: snap.version, held: s.count(typ, w, snap), res: res}
	// A client that never answers must not make pending grow without bound: drop the oldest
	// (their ACKs would be stale anyway once newer responses are answered).
	if len(s.pending) > maxPending {
		oldest, oldestKey := uint64(math.MaxUint64), ""
		for k := range s.pending {
			if n, err := strconv.ParseUint(k, 10, 64); err == nil && n < oldest {
				oldest, oldestKey = n, k
			}
		}
		delete(s.pending, oldestKey)
	}
	return &response{typ: typ, version: snap.version, nonce: nonce, res: res, removed: removed}
}

const maxPending = 64

// isPending reports whether the response with nonce still awaits its answer.
func (s *stream) isPending(nonce string) bool {
	_, ok := s.pending[nonce]
	return ok
}

// forget drops the response with nonce from those awaiting an answer: an answer that comes
// later is stale.
func (s *stream) forget(nonce string) { delete(s.pending, nonce) }

// status is a copy of the stream's state for the admin page.
func (s *stream) status() map[string]TypeStatus {
	out := make(map[string]TypeStatus, len(s.watches))
	for typ, w := range s.watches {
		sent := 0
		if s.base != nil {
			sent = s.count(typ, w, s.base)
		}
		out[typ] = TypeStatus{
			Wildcard:     w.wildcard,
			Sent:         sent,
			Acked:        w.acked,
			AckedVersion: w.ackedVersion,
			LastNACK:     w.lastNACK,
		}
	}
	return out
}

// TypeStatus is what the admin page shows per resource type of a client.
type TypeStatus struct {
	Wildcard     bool   `json:"wildcard"`
	Sent         int    `json:"sent"`
	Acked        int    `json:"acked"`
	AckedVersion string `json:"ackedVersion"`
	LastNACK     string `json:"lastNack,omitempty"`
}

// ClientStatus describes a connected client.
type ClientStatus struct {
	Proxy
	ConnectedAt time.Time             `json:"connectedAt"`
	Types       map[string]TypeStatus `json:"types"`
}

// resourceNames returns the names of res.
func resourceNames(res []*resource) []string {
	names := make([]string, len(res))
	for i, r := range res {
		names[i] = r.name
	}
	return names
}
