package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// RRConfig is an open-loop request/response load: Rate requests per second in all, spread over
// Conns persistent connections, each request Size bytes that the echo server sends back.
type RRConfig struct {
	Addr     string
	Rate     int
	Conns    int
	Size     int
	Duration time.Duration
	Timeout  time.Duration
}

// RRResult holds latency percentiles in nanoseconds. Latency runs from when a request was due
// (its slot in the fixed schedule), not from when it was sent: a connection that falls behind
// counts the wait, so a stall is not hidden by sending less (coordinated omission).
type RRResult struct {
	Requests, Errors          int
	P50, P90, P99, P999, Max  int64
	FirstError                string `json:",omitempty"`
	AchievedRate, OfferedRate float64
}

// RR runs the load and returns what it measured.
func RR(ctx context.Context, cfg RRConfig) (RRResult, error) {
	if cfg.Rate <= 0 || cfg.Conns <= 0 || cfg.Size <= 0 || cfg.Duration <= 0 {
		return RRResult{}, errors.New("rr: rate, conns, size and duration must be positive")
	}
	conns := make([]net.Conn, cfg.Conns)
	for i := range conns {
		d := net.Dialer{Timeout: cfg.Timeout}
		c, err := d.DialContext(ctx, "tcp", cfg.Addr)
		if err != nil {
			return RRResult{}, fmt.Errorf("connection %d: %w", i, err)
		}
		defer c.Close()
		conns[i] = c
	}
	interval := time.Second / time.Duration(cfg.Rate)
	total := int(cfg.Duration / interval)
	start := time.Now().Add(10 * time.Millisecond)
	var mu sync.Mutex
	var lat []int64
	var res RRResult
	var wg sync.WaitGroup
	for w, c := range conns {
		wg.Go(func() {
			req := make([]byte, cfg.Size)
			resp := make([]byte, cfg.Size)
			mine := make([]int64, 0, total/cfg.Conns+1)
			var errs int
			var first error
			for k := w; k < total && ctx.Err() == nil; k += cfg.Conns {
				due := start.Add(time.Duration(k) * interval)
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
				_ = c.SetDeadline(time.Now().Add(cfg.Timeout))
				_, err := c.Write(req)
				if err == nil {
					_, err = io.ReadFull(c, resp)
				}
				if err != nil {
					errs++
					if first == nil {
						first = err
					}
					break // a broken connection takes no more requests
				}
				mine = append(mine, int64(time.Since(due)))
			}
			mu.Lock()
			lat = append(lat, mine...)
			res.Errors += errs
			if first != nil && res.FirstError == "" {
				res.FirstError = first.Error()
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	res.Requests = len(lat)
	res.OfferedRate = float64(cfg.Rate)
	res.AchievedRate = float64(len(lat)) / elapsed.Seconds()
	if n := len(lat); n > 0 {
		at := func(q float64) int64 { return lat[min(n-1, int(q*float64(n)))] }
		res.P50, res.P90, res.P99, res.P999, res.Max = at(0.50), at(0.90), at(0.99), at(0.999), lat[n-1]
	}
	return res, nil
}

// HoldIdle opens n connections to addr, proves each carries a byte both ways, calls ready, and
// keeps them open until ctx ends.
func HoldIdle(ctx context.Context, addr string, n int, timeout time.Duration, ready func()) error {
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	b := []byte{'x'}
	for i := range n {
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
		}
		conns = append(conns, c)
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write(b); err != nil {
			return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
		}
		_ = c.SetDeadline(time.Time{})
	}
	ready()
	<-ctx.Done()
	return nil
}
