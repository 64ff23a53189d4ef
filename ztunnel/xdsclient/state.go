package xdsclient

import (
	"crypto/x509"
	"errors"
	"iter"
	"net/netip"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// entry is one resource held, with the version the server gave it (sent back on reconnect as
// initial_resource_versions).
type entry[T any] struct {
	msg     T
	version string
}

// State is one immutable view of the configuration. Nothing in it, nor the messages it returns,
// may be modified: the data path reads it without locks, and the next State shares most of it.
type State struct {
	workloads map[string]entry[*workloadv1.Workload] // by uid
	byAddr    index[netip.Addr, *workloadv1.Workload]
	services  map[string]entry[*workloadv1.Service] // by "<namespace>/<hostname>"
	byVIP     index[netip.AddrPort, *workloadv1.Service]
	authz     map[string]entry[*workloadv1.Authorization] // by "<namespace>/<name>"
	routes    map[string]entry[*routev1.ServiceRoutes]    // by service, "<namespace>/<hostname>"
	bundle    *bundle                                     // nil: none
}

// bundle is the trust bundle with its roots parsed once.
type bundle struct {
	entry[*cav1.TrustBundle]
	pool *x509.CertPool
	pem  []byte
}

func emptyState() *State {
	return &State{
		workloads: map[string]entry[*workloadv1.Workload]{},
		byAddr:    newIndex(workloadKeys, workloadName),
		services:  map[string]entry[*workloadv1.Service]{},
		byVIP:     newIndex(serviceKeys, serviceName),
		authz:     map[string]entry[*workloadv1.Authorization]{},
		routes:    map[string]entry[*routev1.ServiceRoutes]{},
	}
}

// Workload returns the workload with uid.
func (s *State) Workload(uid string) *workloadv1.Workload { return s.workloads[uid].msg }

// WorkloadByAddr returns the workload with address a (IPv4-mapped IPv6 addresses are looked up as
// IPv4). When several claim the address, the one with the smallest uid wins.
func (s *State) WorkloadByAddr(a netip.Addr) *workloadv1.Workload {
	w, _ := s.byAddr.first[a.Unmap()]
	return w
}

// Workloads iterates over the workloads by uid, in no order.
func (s *State) Workloads() iter.Seq2[string, *workloadv1.Workload] { return messages(s.workloads) }

// Service returns the service named "<namespace>/<hostname>".
func (s *State) Service(name string) *workloadv1.Service { return s.services[name].msg }

// ServiceByVIP returns the service with cluster IP vip.Addr() and service port vip.Port(). When
// several claim it, the one with the smallest name wins.
func (s *State) ServiceByVIP(vip netip.AddrPort) *workloadv1.Service {
	v, _ := s.byVIP.first[netip.AddrPortFrom(vip.Addr().Unmap(), vip.Port())]
	return v
}

// Services iterates over the services by "<namespace>/<hostname>", in no order.
func (s *State) Services() iter.Seq2[string, *workloadv1.Service] { return messages(s.services) }

// Authorization returns the authorization named "<namespace>/<name>".
func (s *State) Authorization(name string) *workloadv1.Authorization { return s.authz[name].msg }

// Authorizations iterates over the authorizations by "<namespace>/<name>", in no order.
func (s *State) Authorizations() iter.Seq2[string, *workloadv1.Authorization] {
	return messages(s.authz)
}

// Routes returns the routes of the service named "<namespace>/<hostname>" (waypoints only).
func (s *State) Routes(name string) *routev1.ServiceRoutes { return s.routes[name].msg }

// AllRoutes iterates over the routes by service, in no order.
func (s *State) AllRoutes() iter.Seq2[string, *routev1.ServiceRoutes] { return messages(s.routes) }

// TrustBundle returns the trust bundle, nil before one was received or after it was removed.
func (s *State) TrustBundle() *cav1.TrustBundle {
	if s.bundle == nil {
		return nil
	}
	return s.bundle.msg
}

// Roots returns the trust bundle's roots as a pool (nil without a bundle) and as concatenated PEM.
func (s *State) Roots() (*x509.CertPool, []byte) {
	if s.bundle == nil {
		return nil, nil
	}
	return s.bundle.pool, s.bundle.pem
}

// Len returns how many resources of typeURL the state holds.
func (s *State) Len(typeURL string) int {
	switch typeURL {
	case TypeWorkload:
		return len(s.workloads)
	case TypeService:
		return len(s.services)
	case TypeAuthorization:
		return len(s.authz)
	case TypeServiceRoutes:
		return len(s.routes)
	case TypeTrustBundle:
		if s.bundle != nil {
			return 1
		}
	}
	return 0
}

// versions returns the name and version of every resource of typeURL held: a reconnect's
// initial_resource_versions.
func (s *State) versions(typeURL string) map[string]string {
	out := make(map[string]string, s.Len(typeURL))
	switch typeURL {
	case TypeWorkload:
		addVersions(out, s.workloads)
	case TypeService:
		addVersions(out, s.services)
	case TypeAuthorization:
		addVersions(out, s.authz)
	case TypeServiceRoutes:
		addVersions(out, s.routes)
	case TypeTrustBundle:
		if s.bundle != nil {
			out[TrustBundleName] = s.bundle.version
		}
	}
	return out
}

func addVersions[T any](out map[string]string, m map[string]entry[T]) {
	for n, e := range m {
		out[n] = e.version
	}
}

func messages[T any](m map[string]entry[T]) iter.Seq2[string, T] {
	return func(yield func(string, T) bool) {
		for n, e := range m {
			if !yield(n, e.msg) {
				return
			}
		}
	}
}

// Store holds the current State. Readers call Load on every use (an atomic load, no lock) and
// keep the State only for the work at hand; the client replaces it, copy-on-write, once per
// response that changed something.
type Store struct {
	cur atomic.Pointer[State]

	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

// NewStore returns a store holding an empty State.
func NewStore() *Store {
	s := &Store{subs: map[chan struct{}]struct{}{}}
	s.cur.Store(emptyState())
	return s
}

// Load returns the current State.
func (s *Store) Load() *State { return s.cur.Load() }

// Subscribe returns a channel that receives a value after the State changes, and a function
// that ends the subscription. Notifications coalesce: a subscriber that is busy while several
// changes happen receives one, and then Load returns the latest State.
func (s *Store) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}

// publish makes st current and notifies the subscribers.
func (s *Store) publish(st *State) {
	s.cur.Store(st)
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default: // one is pending already
		}
	}
}

// Put applies resources as if the server had sent them (name, message pairs of one type per
// call), for tests of what reads a Store and for tools that replay a configuration dump. It
// returns the first resource refused.
func (s *Store) Put(typeURL string, resources map[string]proto.Message) error {
	resp := &deltaResponse{typeURL: typeURL}
	for name, m := range resources {
		b, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		resp.resources = append(resp.resources, resource{name: name, version: "put", hasBody: true, bodyType: typeURL, body: b})
	}
	next, rej := apply(s.Load(), resp, nil)
	if len(rej) > 0 {
		return errors.New(rej[0].String())
	}
	s.publish(next)
	return nil
}
