package hbone

import (
	"log/slog"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// refusals logs the connections a server refuses (a failed handshake, a handshake flood) at
// Warn, where an operator looks, but at most one line per second: a hostile peer cannot turn
// them into a log flood. The lines left out are counted in the next one.
type refusals struct {
	log        *slog.Logger
	lim        *rate.Limiter
	suppressed atomic.Int64
}

func newRefusals(log *slog.Logger) *refusals {
	return &refusals{log: log, lim: rate.NewLimiter(1, 1)}
}

func (r *refusals) note(msg string, args ...any) {
	if !r.lim.Allow() {
		r.suppressed.Add(1)
		return
	}
	if n := r.suppressed.Swap(0); n > 0 {
		args = append(args, "refused_since_last_line", n)
	}
	r.log.Warn(msg, args...)
}
