// Package logwriter batches log lines into few writes, for logs written once per request (the
// waypoint's access log): a write system call per line costs more than the rest of the line's work.
//
// Rules kept here:
//   - A write system call carries whole lines only (each Write is one line or several, as slog
//     handlers write them), so lines written straight to the same file descriptor by another
//     logger never land inside a batched one.
//   - A line waits at most Interval after it was written (as Envoy's access log flush interval),
//     and no longer than it takes to fill Size bytes; Flush and Close write what waits at once.
//   - An idle process is never woken: the flush timer is armed by the first line of a batch only.
//   - A write error is returned by the next Write or Flush; lines are dropped, never blocked on.
package logwriter

import (
	"io"
	"sync"
	"time"
)

// Defaults: 64 KiB holds a few hundred access log lines; a second is what people tailing logs
// tolerate (Envoy's default).
const (
	DefaultSize     = 64 << 10
	DefaultInterval = time.Second
)

// Writer batches Writes to an underlying writer. It is safe for concurrent use.
type Writer struct {
	out      io.Writer
	size     int
	interval time.Duration
	// afterFunc arms the flush timer (time.AfterFunc; tests give their own clock).
	afterFunc func(time.Duration, func()) func() bool

	mu     sync.Mutex
	buf    []byte
	stop   func() bool // the armed timer's Stop, nil when none is armed
	armed  uint64      // counts armed timers, so that a timer stopped too late flushes nothing
	err    error       // the last write error, returned once
	closed bool
}

// New returns a Writer over out with the default size and interval.
func New(out io.Writer) *Writer { return NewSize(out, DefaultSize, DefaultInterval) }

// NewSize returns a Writer over out that writes when size bytes wait or interval after a batch's
// first line.
func NewSize(out io.Writer, size int, interval time.Duration) *Writer {
	return &Writer{out: out, size: size, interval: interval, buf: make([]byte, 0, size),
		afterFunc: func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }}
}

// Write takes p, which ends in a line end, to be written later; a p larger than the buffer is
// written at once. After Close, it writes at once.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return w.out.Write(p)
	}
	if len(w.buf)+len(p) > w.size {
		w.flushLocked()
	}
	if len(p) > w.size {
		if _, err := w.out.Write(p); err != nil {
			w.err = err
		}
	} else {
		w.buf = append(w.buf, p...)
		if w.stop == nil {
			w.armed++
			n := w.armed
			w.stop = w.afterFunc(w.interval, func() { w.onTimer(n) })
		}
	}
	err := w.err
	w.err = nil
	return len(p), err
}

func (w *Writer) onTimer(n uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n == w.armed && w.stop != nil {
		w.flushLocked()
	}
}

// Flush writes what waits.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flushLocked()
	err := w.err
	w.err = nil
	return err
}

// Close writes what waits and stops batching: later Writes go straight through.
func (w *Writer) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	return w.Flush()
}

func (w *Writer) flushLocked() {
	if w.stop != nil {
		w.stop()
		w.stop = nil
	}
	if len(w.buf) == 0 {
		return
	}
	if _, err := w.out.Write(w.buf); err != nil {
		w.err = err
	}
	w.buf = w.buf[:0]
}
