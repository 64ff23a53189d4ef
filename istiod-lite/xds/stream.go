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
	// RoleProxy is any other authenticated proxy (waypoints).
	RoleProxy Role = "proxy"
)

// Proxy is an authenticated client.
type Proxy struct {
	// ID is the client's node.id, for logs and the admin page.
	ID   string
	Role Role
	// Node is the Kubernetes node the client runs on (from its bound token).
	Node      string
	Namespace string
}

// watch is the state of one resource type on one stream.
type watch struct {
	wildcard bool
	names    map[string]bool
	// sent is what the client holds or has been sent and not yet NACKed: name -> version.
	sent map[string]string
	// acked is what the client has confirmed: name -> version.
	acked        map[string]string
	ackedVersion string // snapshot version of the last ACKed response
	lastNACK     string
}

func (w *watch) subscribed(name string) bool { return w.wildcard || w.names[name] }

// pendingResponse is a response awaiting ACK or NACK.
type pendingResponse struct {
	typ      string
	version  string
	versions map[string]string
	removed  []string
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
}

func newStream(p *Proxy) *stream {
	return &stream{proxy: p, watches: map[string]*watch{}, pending: map[string]*pendingResponse{}}
}

// known reports whether typ is a type this server serves.
func known(typ string) bool {
	switch typ {
	case TypeWorkload, TypeService, TypeAuthorization, TypeTrustBundle:
		return true
	}
	return false
}

// onRequest processes a request against snap. It returns the response to send (nil for none) and,
// for a NACK, what was rejected.
func (s *stream) onRequest(req *discoveryv3.DeltaDiscoveryRequest, snap *Snapshot) (*discoveryv3.DeltaDiscoveryResponse, *NACK) {
	typ := req.GetTypeUrl()
	if !known(typ) {
		return nil, nil // unknown types are ignored, as xDS servers do
	}
	var nack *NACK
	if nonce := req.GetResponseNonce(); nonce != "" {
		if p, ok := s.pending[nonce]; ok && p.typ == typ {
			delete(s.pending, nonce)
			w := s.watches[typ]
			if d := req.GetErrorDetail(); d != nil {
				// The client keeps its last good version of what it rejected. We do not resend:
				// the same content would be rejected again; the next change of a resource does.
				nack = &NACK{TypeURL: typ, Nonce: nonce, Reason: d.GetMessage(), Resources: slices.Sorted(maps.Keys(p.versions))}
				w.lastNACK = d.GetMessage()
			} else {
				for n, v := range p.versions {
					w.acked[n] = v
				}
				for _, n := range p.removed {
					delete(w.acked, n)
				}
				w.ackedVersion = p.version
			}
		}
		// A stale nonce (superseded, or from before a reconnect) is ignored.
	}

	w, ok := s.watches[typ]
	consider := map[string]struct{}{}
	if !ok {
		w = &watch{names: map[string]bool{}, sent: map[string]string{}, acked: map[string]string{}}
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
		// What the client already holds (reconnect) is not sent again; its versions are content
		// hashes, so equal means identical.
		for n, v := range req.GetInitialResourceVersions() {
			w.sent[n] = v
			w.acked[n] = v
			consider[n] = struct{}{}
		}
		for n := range snap.resources[typ] {
			consider[n] = struct{}{}
		}
		for n := range w.names {
			consider[n] = struct{}{}
		}
		resp := s.generate(typ, w, snap, consider, w.names)
		if resp == nil {
			// Always answer a new subscription, so the client knows it is in sync.
			resp = s.respond(typ, snap, nil, nil)
		}
		return resp, nack
	}

	for _, n := range req.GetResourceNamesUnsubscribe() {
		if n == "*" {
			w.wildcard = false
			for name := range w.sent {
				consider[name] = struct{}{}
			}
			continue
		}
		delete(w.names, n)
		// The client forgets unsubscribed resources itself; no removal is sent.
		if !w.wildcard {
			delete(w.sent, n)
			delete(w.acked, n)
		}
	}
	newNames := map[string]bool{}
	for _, n := range req.GetResourceNamesSubscribe() {
		if n == "*" {
			w.wildcard = true
			for name := range snap.resources[typ] {
				consider[name] = struct{}{}
			}
			continue
		}
		w.names[n] = true
		newNames[n] = true
		consider[n] = struct{}{}
	}
	if len(consider) == 0 {
		return nil, nack
	}
	return s.generate(typ, w, snap, consider, newNames), nack
}

// onPush computes the responses for a new snapshot, given the names that changed per type since
// the snapshot this stream last saw (nil: consider everything). Authorizations are always
// re-evaluated in full (see changed).
func (s *stream) onPush(snap *Snapshot, dirty map[string]map[string]struct{}) []*discoveryv3.DeltaDiscoveryResponse {
	var out []*discoveryv3.DeltaDiscoveryResponse
	for _, typ := range []string{TypeTrustBundle, TypeService, TypeWorkload, TypeAuthorization} {
		w, ok := s.watches[typ]
		if !ok {
			continue
		}
		consider := dirty[typ]
		if dirty != nil && typ != TypeAuthorization && len(consider) == 0 {
			continue // nothing of this type changed
		}
		if dirty == nil || typ == TypeAuthorization {
			consider = map[string]struct{}{}
			for n := range snap.resources[typ] {
				consider[n] = struct{}{}
			}
			for n := range w.sent {
				consider[n] = struct{}{}
			}
		}
		if r := s.generate(typ, w, snap, consider, nil); r != nil {
			out = append(out, r)
		}
	}
	return out
}

// generate builds the response that brings the client from w.sent to snap for the names in
// consider, and records it as sent. Names just subscribed to by name (fresh) that do not exist (or
// that the proxy may not see) are listed as removed, so the client knows not to wait for them. It
// returns nil when nothing differs.
func (s *stream) generate(typ string, w *watch, snap *Snapshot, consider map[string]struct{}, fresh map[string]bool) *discoveryv3.DeltaDiscoveryResponse {
	var res []*discoveryv3.Resource
	var removed []string
	versions := map[string]string{}
	for _, n := range slices.Sorted(maps.Keys(consider)) {
		r, ok := snap.resources[typ][n]
		if ok && w.subscribed(n) && snap.visible(s.proxy, typ, n) {
			if w.sent[n] == r.version {
				continue
			}
			res = append(res, &discoveryv3.Resource{Name: n, Version: r.version, Resource: r.body})
			versions[n] = r.version
			w.sent[n] = r.version
			continue
		}
		if _, had := w.sent[n]; had || (fresh[n] && w.subscribed(n)) {
			removed = append(removed, n)
			delete(w.sent, n)
		}
	}
	if len(res) == 0 && len(removed) == 0 {
		return nil
	}
	resp := s.respond(typ, snap, res, removed)
	s.pending[resp.Nonce].versions = versions
	return resp
}

func (s *stream) respond(typ string, snap *Snapshot, res []*discoveryv3.Resource, removed []string) *discoveryv3.DeltaDiscoveryResponse {
	s.nonce++
	nonce := strconv.FormatUint(s.nonce, 10)
	s.pending[nonce] = &pendingResponse{typ: typ, version: snap.version, versions: map[string]string{}, removed: removed}
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
	return &discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: snap.version,
		TypeUrl:           typ,
		Resources:         res,
		RemovedResources:  removed,
		Nonce:             nonce,
	}
}

const maxPending = 64

// status is a copy of the stream's state for the admin page.
func (s *stream) status() map[string]TypeStatus {
	out := make(map[string]TypeStatus, len(s.watches))
	for typ, w := range s.watches {
		out[typ] = TypeStatus{
			Wildcard:     w.wildcard,
			Sent:         len(w.sent),
			Acked:        len(w.acked),
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
