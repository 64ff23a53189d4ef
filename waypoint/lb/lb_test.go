package lb

import (
	"net/netip"
	"testing"
	"time"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func addrs(n int) []netip.AddrPort {
	var out []netip.AddrPort
	for i := range n {
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80))
	}
	return out
}

func TestRoundRobinAndRandomSpread(t *testing.T) {
	eps := addrs(3)
	for _, lb := range []routev1.TrafficPolicy_LoadBalancer{routev1.TrafficPolicy_ROUND_ROBIN, routev1.TrafficPolicy_RANDOM,
		routev1.TrafficPolicy_LEAST_REQUEST, routev1.TrafficPolicy_DEFAULT} {
		c := &clock{t: time.Unix(1000, 0)}
		b := New(&routev1.TrafficPolicy{LoadBalancer: lb}, c.now)
		counts := make([]int, 3)
		for range 3000 {
			i, done := b.Pick(eps, "", nil)
			counts[i]++
			c.add(time.Millisecond) // every endpoint equally fast
			done(200)
		}
		for i, n := range counts {
			if n < 700 || n > 1300 {
				t.Errorf("%v: endpoint %d got %d of 3000", lb, i, n)
			}
		}
		if lb == routev1.TrafficPolicy_ROUND_ROBIN && (counts[0] != 1000 || counts[1] != 1000) {
			t.Errorf("round robin not even: %v", counts)
		}
	}
}

func TestLeastRequestAvoidsBusy(t *testing.T) {
	eps := addrs(2)
	b := New(&routev1.TrafficPolicy{LoadBalancer: routev1.TrafficPolicy_LEAST_REQUEST}, nil)
	busy, _ := b.Pick(eps, "", nil) // held in flight
	for range 100 {
		i, done := b.Pick(eps, "", nil)
		if i == busy {
			t.Fatal("picked the endpoint with a request in flight over an idle one")
		}
		done(200)
	}
}

func TestPeakEWMARoutesAroundSlow(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	eps := addrs(2)
	b := New(nil, c.now)
	// Endpoint 0 answers in 100 ms, endpoint 1 in 1 ms.
	for range 20 {
		i, done := b.Pick(eps, "", nil)
		if i == 0 {
			c.add(100 * time.Millisecond)
		} else {
			c.add(time.Millisecond)
		}
		done(200)
	}
	slow := 0
	for range 200 {
		i, done := b.Pick(eps, "", nil)
		if i == 0 {
			slow++
		}
		c.add(time.Millisecond)
		done(200)
	}
	if slow > 20 {
		t.Errorf("the slow endpoint got %d of 200 requests", slow)
	}
}

func TestConsistentHashSticks(t *testing.T) {
	eps := addrs(5)
	b := New(&routev1.TrafficPolicy{LoadBalancer: routev1.TrafficPolicy_CONSISTENT_HASH}, nil)
	first := map[string]int{}
	for _, k := range []string{"alice", "bob", "carol", "dave"} {
		i, done := b.Pick(eps, k, nil)
		done(200)
		first[k] = i
	}
	for range 10 {
		for k, want := range first {
			if i, done := b.Pick(eps, k, nil); i != want {
				t.Fatalf("key %s moved from %d to %d", k, want, i)
			} else {
				done(200)
			}
		}
	}
	// Removing an endpoint moves only the keys it had.
	gone := eps[first["alice"]]
	rest := append([]netip.AddrPort{}, eps[:first["alice"]]...)
	rest = append(rest, eps[first["alice"]+1:]...)
	for k, want := range first {
		i, done := b.Pick(rest, k, nil)
		done(200)
		if eps[want] != gone && rest[i] != eps[want] {
			t.Errorf("key %s moved although its endpoint stayed", k)
		}
	}
}

func TestRetryGoesElsewhere(t *testing.T) {
	eps := addrs(2)
	b := New(nil, nil)
	for range 50 {
		i, done := b.Pick(eps, "", nil)
		done(503)
		j, done2 := b.Pick(eps, "", []netip.AddrPort{eps[i]})
		done2(200)
		if i == j {
			t.Fatal("a retry went to the endpoint it had just tried")
		}
	}
}

func TestOutlierEjectsAndBringsBack(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	eps := addrs(4)
	bad := eps[2]
	b := New(&routev1.TrafficPolicy{LoadBalancer: routev1.TrafficPolicy_ROUND_ROBIN,
		OutlierDetection: &routev1.OutlierDetection{Consecutive_5XxErrors: 3, BaseEjectionTimeMs: 30000, MaxEjectionPercent: 50}}, c.now)
	send := func(n int) (toBad int) {
		for range n {
			i, done := b.Pick(eps, "", nil)
			if eps[i] == bad {
				toBad++
				done(503)
			} else {
				done(200)
			}
		}
		return toBad
	}
	if got := send(12); got != 3 || !b.Ejected(bad) {
		t.Fatalf("after 3 consecutive 503s: %d to the bad endpoint, ejected %v", got, b.Ejected(bad))
	}
	if got := send(100); got != 0 {
		t.Errorf("an ejected endpoint got %d requests", got)
	}
	c.add(31 * time.Second)
	if b.Ejected(bad) {
		t.Fatal("still ejected after baseEjectionTime")
	}
	// Back, it fails again: the second ejection lasts twice as long.
	send(12)
	c.add(31 * time.Second)
	if !b.Ejected(bad) {
		t.Error("second ejection shorter than 2 × baseEjectionTime")
	}
	c.add(30 * time.Second)
	if b.Ejected(bad) {
		t.Error("second ejection longer than 2 × baseEjectionTime")
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	eps := addrs(2)
	b := New(&routev1.TrafficPolicy{LoadBalancer: routev1.TrafficPolicy_ROUND_ROBIN,
		OutlierDetection: &routev1.OutlierDetection{Consecutive_5XxErrors: 1, BaseEjectionTimeMs: 30000, MaxEjectionPercent: 10}}, nil)
	for range 10 {
		_, done := b.Pick(eps, "", nil)
		done(503)
	}
	if b.Ejected(eps[0]) && b.Ejected(eps[1]) {
		t.Error("both endpoints ejected with maxEjectionPercent 10")
	}
	// With every endpoint failing and one ejected, requests still flow to the other.
	i, done := b.Pick(eps, "", nil)
	done(200)
	if b.Ejected(eps[i]) {
		t.Error("picked an ejected endpoint while another was live")
	}
}
