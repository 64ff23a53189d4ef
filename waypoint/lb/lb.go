// Package lb chooses the endpoint of a Service for each request attempt and keeps what that
// choice learns from: requests in flight, latency, consecutive failures. One Balancer per
// Service, configured by its DestinationRule's trafficPolicy (routev1.TrafficPolicy).
//
// Rules kept here:
//   - Candidates are the ready endpoints minus those already tried by this request (a retry goes
//     elsewhere when it can) and minus the ejected ones; when that leaves none, the ejected ones
//     are used after all (failing is not better than trying), then the tried ones.
//   - DEFAULT: power of two choices over peak-EWMA latency × (requests in flight + 1), Linkerd's
//     balancer: a slow or loaded endpoint gets less traffic. LEAST_REQUEST: power of two choices
//     over requests in flight. ROUND_ROBIN, RANDOM. CONSISTENT_HASH: rendezvous hashing of the
//     request's key, so that a key stays on its endpoint while the endpoint stays.
//   - Outlier detection (Envoy's consecutive 5xx): an endpoint that answers N 5xx or fails N times
//     in a row is ejected for baseEjectionTime × (its ejections so far + 1), unless that would
//     take the ejected share to maxEjectionPercent or more. It comes back when the time is up.
//   - Time comes from the injected clock.
package lb

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// decay is the latency EWMA's time constant: a sample's weight halves in about 7 s.
const decay = 10 * time.Second

// Balancer balances one Service. Safe for concurrent use.
type Balancer struct {
	now    func() time.Time
	mu     sync.Mutex
	policy *routev1.TrafficPolicy
	eps    map[netip.AddrPort]*state
	rr     uint64
}

type state struct {
	pending      int
	ewma         float64 // ns
	seen         time.Time
	failures     int
	ejectedUntil time.Time
	ejections    int
}

// New returns a balancer with the policy (nil for the defaults) and the clock (nil: time.Now).
func New(policy *routev1.TrafficPolicy, now func() time.Time) *Balancer {
	if now == nil {
		now = time.Now
	}
	return &Balancer{now: now, policy: policy, eps: map[netip.AddrPort]*state{}}
}

// SetPolicy replaces the policy; what was learnt of the endpoints is kept.
func (b *Balancer) SetPolicy(p *routev1.TrafficPolicy) {
	b.mu.Lock()
	b.policy = p
	b.mu.Unlock()
}

// Policy returns the current policy (nil for the defaults).
func (b *Balancer) Policy() *routev1.TrafficPolicy {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.policy
}

// Pick returns the index in eps of the endpoint for an attempt, and done, to be called once with
// the attempt's status (0 when it failed without one). key is the request's consistent-hash key.
// eps must not be empty.
func (b *Balancer) Pick(eps []netip.AddrPort, key string, tried []netip.AddrPort) (int, func(status int)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	cand := b.candidates(eps, tried, now)
	var i int
	switch b.policy.GetLoadBalancer() {
	case routev1.TrafficPolicy_ROUND_ROBIN:
		i = cand[b.rr%uint64(len(cand))]
		b.rr++
	case routev1.TrafficPolicy_RANDOM:
		i = cand[rand.IntN(len(cand))]
	case routev1.TrafficPolicy_CONSISTENT_HASH:
		i = rendezvous(eps, cand, key)
	case routev1.TrafficPolicy_LEAST_REQUEST:
		i = b.p2c(eps, cand, func(s *state) float64 { return float64(s.pending) })
	default:
		i = b.p2c(eps, cand, func(s *state) float64 { return s.cost(now) })
	}
	s := b.get(eps[i])
	s.pending++
	start := now
	var once sync.Once
	return i, func(status int) {
		once.Do(func() { b.done(eps[i], start, status) })
	}
}

// candidates returns the indexes of the endpoints to choose from (see the package rules).
func (b *Balancer) candidates(eps, tried []netip.AddrPort, now time.Time) []int {
	var fresh, live []int
	for i, a := range eps {
		if s := b.eps[a]; s != nil && now.Before(s.ejectedUntil) {
			continue
		}
		live = append(live, i)
		if !slices.Contains(tried, a) {
			fresh = append(fresh, i)
		}
	}
	switch {
	case len(fresh) > 0:
		return fresh
	case len(live) > 0:
		return live
	}
	all := make([]int, len(eps))
	for i := range eps {
		all[i] = i
	}
	return all
}

func (b *Balancer) get(a netip.AddrPort) *state {
	s := b.eps[a]
	if s == nil {
		s = &state{}
		b.eps[a] = s
	}
	return s
}

func (b *Balancer) p2c(eps []netip.AddrPort, cand []int, cost func(*state) float64) int {
	if len(cand) == 1 {
		return cand[0]
	}
	x := rand.IntN(len(cand))
	y := rand.IntN(len(cand) - 1)
	if y >= x {
		y++
	}
	i, j := cand[x], cand[y]
	if cost(b.get(eps[j])) < cost(b.get(eps[i])) {
		return j
	}
	return i
}

// rendezvous picks the candidate with the highest hash of (key, address).
func rendezvous(eps []netip.AddrPort, cand []int, key string) int {
	best, bestH := cand[0], uint64(0)
	for _, i := range cand {
		h := fnv.New64a()
		h.Write([]byte(key))
		h.Write([]byte{0})
		h.Write([]byte(eps[i].String()))
		if v := h.Sum64(); v >= bestH {
			best, bestH = i, v
		}
	}
	return best
}

func (s *state) decayed(now time.Time) float64 {
	if s.seen.IsZero() {
		return 0
	}
	return s.ewma * math.Exp(-float64(now.Sub(s.seen))/float64(decay))
}

func (s *state) cost(now time.Time) float64 {
	e := s.decayed(now)
	if e == 0 {
		// Nothing measured yet: prefer the one with less in flight, and try it.
		return float64(s.pending)
	}
	return e * float64(s.pending+1)
}

func (b *Balancer) done(a netip.AddrPort, start time.Time, status int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	s := b.get(a)
	s.pending--
	rtt := float64(now.Sub(start))
	if e := s.decayed(now); rtt > e {
		s.ewma = rtt // peak: a slower answer is believed at once
	} else {
		w := math.Exp(-float64(now.Sub(s.seen)) / float64(decay))
		s.ewma = e*w + rtt*(1-w)
	}
	s.seen = now
	od := b.policy.GetOutlierDetection()
	if status != 0 && status < 500 {
		s.failures = 0
		return
	}
	s.failures++
	if od.GetConsecutive_5XxErrors() == 0 || s.failures < int(od.GetConsecutive_5XxErrors()) || now.Before(s.ejectedUntil) {
		return
	}
	ejected := 0
	for _, o := range b.eps {
		if now.Before(o.ejectedUntil) {
			ejected++
		}
	}
	if maxPct := od.GetMaxEjectionPercent(); maxPct < 100 && len(b.eps) > 0 && ejected*100/len(b.eps) >= int(maxPct) && ejected > 0 {
		return
	}
	s.ejections++
	s.failures = 0
	base := time.Duration(od.GetBaseEjectionTimeMs()) * time.Millisecond
	if base <= 0 {
		base = 30 * time.Second
	}
	s.ejectedUntil = now.Add(base * time.Duration(s.ejections))
}

// Ejected reports whether the endpoint is ejected now.
func (b *Balancer) Ejected(a netip.AddrPort) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.eps[a]
	return s != nil && b.now().Before(s.ejectedUntil)
}

// Forget drops what was learnt of endpoints that are no longer in eps.
func (b *Balancer) Forget(eps []netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for a, s := range b.eps {
		if s.pending == 0 && !slices.Contains(eps, a) {
			delete(b.eps, a)
		}
	}
}
