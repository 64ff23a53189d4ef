package logwriter

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder keeps each write the Writer makes.
type recorder struct {
	mu     sync.Mutex
	writes []string
	err    error
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.writes = append(r.writes, string(p))
	return len(p), nil
}

// fakeTimers stands in for time.AfterFunc: fire runs the armed callbacks.
type fakeTimers struct {
	armed []func()
	dur   []time.Duration
}

func (f *fakeTimers) afterFunc(d time.Duration, fn func()) func() bool {
	i := len(f.armed)
	f.armed, f.dur = append(f.armed, fn), append(f.dur, d)
	return func() bool {
		stopped := f.armed[i] != nil
		f.armed[i] = nil
		return stopped
	}
}

func (f *fakeTimers) fire() {
	for i, fn := range f.armed {
		if fn != nil {
			f.armed[i] = nil
			fn()
		}
	}
}

func newTest(size int) (*Writer, *recorder, *fakeTimers) {
	rec, ft := &recorder{}, &fakeTimers{}
	w := NewSize(rec, size, time.Second)
	w.afterFunc = ft.afterFunc
	return w, rec, ft
}

func TestBatchesUntilTimer(t *testing.T) {
	w, rec, ft := newTest(1024)
	for _, l := range []string{"a\n", "b\n", "c\n"} {
		if _, err := w.Write([]byte(l)); err != nil {
			t.Fatal(err)
		}
	}
	if len(rec.writes) != 0 {
		t.Fatalf("written before the interval: %q", rec.writes)
	}
	if len(ft.armed) != 1 || ft.dur[0] != time.Second {
		t.Fatalf("want one timer of 1s for the batch, got %v", ft.dur)
	}
	ft.fire()
	if want := []string{"a\nb\nc\n"}; !slices.Equal(rec.writes, want) {
		t.Fatalf("writes %q, want %q", rec.writes, want)
	}
	// The next line arms a new timer.
	_, _ = w.Write([]byte("d\n"))
	if len(ft.armed) != 2 {
		t.Fatalf("no timer armed for the next batch")
	}
	ft.fire()
	if want := []string{"a\nb\nc\n", "d\n"}; !slices.Equal(rec.writes, want) {
		t.Fatalf("writes %q, want %q", rec.writes, want)
	}
}

func TestFullBufferWritesWholeLines(t *testing.T) {
	w, rec, ft := newTest(10)
	for _, l := range []string{"1234\n", "5678\n", "abcd\n", strings.Repeat("x", 15) + "\n"} {
		_, _ = w.Write([]byte(l))
	}
	// "abcd\n" did not fit beside the first two: they went out first, whole; the long line
	// went straight through after "abcd\n".
	want := []string{"1234\n5678\n", "abcd\n", strings.Repeat("x", 15) + "\n"}
	if !slices.Equal(rec.writes, want) {
		t.Fatalf("writes %q, want %q", rec.writes, want)
	}
	ft.fire() // the stopped timers flush nothing more
	if !slices.Equal(rec.writes, want) {
		t.Fatalf("writes after the timer %q, want %q", rec.writes, want)
	}
}

func TestCloseFlushesAndWritesThrough(t *testing.T) {
	w, rec, _ := newTest(1024)
	_, _ = w.Write([]byte("a\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write([]byte("b\n"))
	if want := []string{"a\n", "b\n"}; !slices.Equal(rec.writes, want) {
		t.Fatalf("writes %q, want %q", rec.writes, want)
	}
}

func TestWriteErrorReportedOnce(t *testing.T) {
	w, rec, _ := newTest(1024)
	boom := errors.New("disk full")
	rec.err = boom
	_, _ = w.Write([]byte("a\n"))
	if err := w.Flush(); !errors.Is(err, boom) {
		t.Fatalf("Flush: %v, want %v", err, boom)
	}
	rec.err = nil
	if err := w.Flush(); err != nil {
		t.Fatalf("the error came back: %v", err)
	}
}

// TestRealTimer: with the real clock, a line is written without a Flush.
func TestRealTimer(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	done := make(chan struct{})
	w := NewSize(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		buf.Write(p)
		close(done)
		return len(p), nil
	}), 1024, time.Millisecond)
	_, _ = w.Write([]byte("a\n"))
	<-done
	mu.Lock()
	defer mu.Unlock()
	if buf.String() != "a\n" {
		t.Fatalf("got %q", buf.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
