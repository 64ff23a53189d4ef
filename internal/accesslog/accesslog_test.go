package accesslog

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSameAsSlog: a line is byte for byte what slog's JSON handler writes for the same record,
// strings that need escaping included.
func TestSameAsSlog(t *testing.T) {
	at := time.Date(2026, 12, 6, 21, 3, 55, 123456789, time.FixedZone("x", 3600))
	values := []string{"", "plain", `quo"te`, `back\slash`, "new\nline\r\t", "ctl\x00\x01\x1f\x7f", "<html>&amp;",
		"naïve ☃", "bad \xff utf8 \xc3", "js \u2028 \u2029", strings.Repeat("long ", 200)}
	for _, v := range values {
		var want, got bytes.Buffer
		h := slog.NewJSONHandler(&want, nil).WithAttrs([]slog.Attr{slog.String("component", "waypoint"), slog.String("gateway", v)})
		r := slog.NewRecord(at, slog.LevelInfo, "access", 0)
		r.AddAttrs(slog.String("path", v), slog.Int64("status", 200), slog.Int64("neg", -7), slog.String("flags", "-"))
		if err := h.Handle(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		l := New(&got, "component", "waypoint", "gateway", v)
		l.now = func() time.Time { return at }
		l.Line().Str("path", v).Int("status", 200).Int("neg", -7).Str("flags", "-").Write()
		if got.String() != want.String() {
			t.Errorf("value %q:\n got %s\nwant %s", v, got.String(), want.String())
		}
	}
}

// Lines written concurrently arrive whole, one Write each.
func TestConcurrentLines(t *testing.T) {
	var w lineWriter
	l := New(&w)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 100 {
				l.Line().Int("writer", int64(i)).Str("pad", strings.Repeat("x", 100*i)).Write()
			}
		})
	}
	wg.Wait()
	if len(w.lines) != 800 {
		t.Fatalf("%d writes, want 800", len(w.lines))
	}
	for _, s := range w.lines {
		if !strings.HasPrefix(s, `{"time":"`) || !strings.HasSuffix(s, "}\n") || strings.Count(s, "\n") != 1 {
			t.Fatalf("not one whole line: %q", s)
		}
	}
}

type lineWriter struct {
	mu    sync.Mutex
	lines []string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines = append(w.lines, string(p))
	return len(p), nil
}

func TestNilLoggerDrops(t *testing.T) {
	var l *Logger
	l.Line().Str("a", "b").Int("c", 1).Write() // must not panic
}

// BenchmarkLine and BenchmarkSlog: a waypoint's access log line, both ways.
func BenchmarkLine(b *testing.B) {
	l := New(io.Discard, "component", "waypoint", "gateway", "shop/wp")
	b.ReportAllocs()
	for b.Loop() {
		l.Line().Str("reporter", "waypoint").Str("method", "POST").Str("path", "/echo").Str("protocol", "http").
			Str("authority", "viawp.wpbench:80").Int("status", 200).Int("duration_ms", 1).
			Str("src_principal", "spiffe://cluster.local/ns/wpbench/sa/default").Str("src_workload", "client").
			Str("dst_service", "wpbench/viawp.wpbench.svc.cluster.local").Str("dst_workload", "server").
			Str("route", "wpbench/r/0").Str("flags", "").Int("retries", 0).Int("bytes_sent", 1024).Write()
	}
}

func BenchmarkSlog(b *testing.B) {
	l := slog.New(slog.NewJSONHandler(io.Discard, nil)).With("component", "waypoint", "gateway", "shop/wp")
	b.ReportAllocs()
	for b.Loop() {
		l.Info("access", "reporter", "waypoint", "method", "POST", "path", "/echo", "protocol", "http",
			"authority", "viawp.wpbench:80", "status", 200, "duration_ms", int64(1),
			"src_principal", "spiffe://cluster.local/ns/wpbench/sa/default", "src_workload", "client",
			"dst_service", "wpbench/viawp.wpbench.svc.cluster.local", "dst_workload", "server",
			"route", "wpbench/r/0", "flags", "", "retries", 0, "bytes_sent", int64(1024))
	}
}
