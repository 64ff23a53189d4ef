// Package limit keeps one token-bucket rate limiter per key (a caller, a peer address), for the
// services of istiod-lite that must not let one caller take what others need. The number of keys
// is bounded, so a flood of distinct keys costs bounded memory. It decides nothing about who a
// caller is or what it may do.
package limit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Keyed rate-limits per key. Safe for concurrent use.
type Keyed struct {
	every rate.Limit
	burst int
	max   int
	now   func() time.Time

	mu sync.Mutex
	m  map[string]*rate.Limiter
}

// New returns a limiter allowing each key burst events at once and every events per second
// after that, remembering at most maxKeys keys. now may be nil for the wall clock.
func New(every rate.Limit, burst, maxKeys int, now func() time.Time) *Keyed {
	if now == nil {
		now = time.Now
	}
	return &Keyed{every: every, burst: burst, max: maxKeys, now: now, m: map[string]*rate.Limiter{}}
}

// Allow reports whether key may act now, taking a token if so.
func (k *Keyed) Allow(key string) bool {
	now := k.now()
	k.mu.Lock()
	defer k.mu.Unlock()
	l, ok := k.m[key]
	if !ok {
		if len(k.m) >= k.max {
			k.sweep(now)
		}
		l = rate.NewLimiter(k.every, k.burst)
		k.m[key] = l
	}
	return l.AllowN(now, 1)
}

// Len returns the number of keys remembered.
func (k *Keyed) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.m)
}

// sweep makes room: it forgets every key whose bucket has refilled (a new limiter would be the
// same); if none has, it forgets one at random. Forgetting an active key gives it a full bucket
// again, a small gift to a flood of distinct keys, where the alternative (refusing new keys) would
// lock out every new caller.
func (k *Keyed) sweep(now time.Time) {
	for key, l := range k.m {
		if l.TokensAt(now) >= float64(k.burst) {
			delete(k.m, key)
		}
	}
	if len(k.m) < k.max {
		return
	}
	for key := range k.m {
		delete(k.m, key)
		return
	}
}
