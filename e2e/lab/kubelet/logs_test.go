package kubelet

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

// stepClock is a clock that advances one second per reading.
func stepClock() func() time.Time {
	t := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	return func() time.Time { t = t.Add(time.Second); return t }
}

func readAll(t *testing.T, path string, o LogOptions) string {
	t.Helper()
	var b bytes.Buffer
	if o.Stdout == nil && o.Stderr == nil {
		o.Stdout, o.Stderr = &b, &b
	}
	if err := ReadLogs(context.Background(), path, o, func() bool { return false }); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestLogsWriteAndRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c", "0.log")
	w, err := openLogWriter(path, 1<<20, 5, stepClock())
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", maxLogLine+10)
	if err := copyStream(w, "stdout", strings.NewReader("one\ntwo\n"+long+"\nlast without newline")); err != nil {
		t.Fatal(err)
	}
	if err := copyStream(w, "stderr", strings.NewReader("oops\n")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	raw, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(raw), "2026-12-05T08:00:01Z stdout F one\n") || !strings.Contains(string(raw), " stdout P xxx") ||
		!strings.HasSuffix(string(raw), "stderr F oops\n") {
		t.Fatalf("file not in the CRI format:\n%.300s", raw)
	}
	all := "one\ntwo\n" + long + "\nlast without newline\noops\n"
	for _, tc := range []struct {
		name string
		o    LogOptions
		want string
	}{
		{"all", LogOptions{TailLines: -1}, all},
		{"tail", LogOptions{TailLines: 2}, "last without newline\noops\n"},
		{"tail 0", LogOptions{TailLines: 0}, ""},
		{"since", LogOptions{TailLines: -1, Since: time.Date(2026, 12, 5, 8, 0, 5, 0, time.UTC)}, "last without newline\noops\n"},
		{"timestamps", LogOptions{TailLines: 1, Timestamps: true}, "2026-12-05T08:00:06Z oops\n"},
		{"limit", LogOptions{TailLines: -1, LimitBytes: 6}, "one\ntw"},
	} {
		if got := readAll(t, path, tc.o); got != tc.want {
			t.Errorf("%s: got %.80q, want %.80q", tc.name, got, tc.want)
		}
	}
	var out, errb bytes.Buffer
	readAll(t, path, LogOptions{TailLines: -1, Stdout: &out, Stderr: io.Discard})
	readAll(t, path, LogOptions{TailLines: -1, Stderr: &errb})
	if strings.Contains(out.String(), "oops") || errb.String() != "oops\n" {
		t.Errorf("streams mixed: stdout %.40q, stderr %q", out.String(), errb.String())
	}
}

func TestLogsRotate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	w, err := openLogWriter(path, 200, 3, stepClock())
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := range 40 {
		line := strings.Repeat(string(rune('a'+i%26)), 20)
		if err := w.entry("stdout", false, []byte(line)); err != nil {
			t.Fatal(err)
		}
		want.WriteString(line + "\n")
	}
	w.Close()
	old, _ := rotatedLogs(path)
	if len(old) != 2 {
		t.Fatalf("%d rotated files kept, want 2 (maxFiles 3): %v", len(old), old)
	}
	for _, f := range append(old, path) {
		if st, _ := os.Stat(f); st.Size() > 200 {
			t.Errorf("%s is %d bytes, over the 200 limit", f, st.Size())
		}
	}
	got := readAll(t, path, LogOptions{TailLines: -1})
	if !strings.HasSuffix(want.String(), got) || strings.Count(got, "\n") < 6 {
		t.Fatalf("read after rotation is not the newest lines in order:\n%s", got)
	}
}

func TestLogsFollowAcrossRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	w, err := openLogWriter(path, 100, 5, stepClock())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.entry("stdout", false, []byte("before")); err != nil {
		t.Fatal(err)
	}
	var out testutil.LogBuffer
	var alive atomic.Bool
	alive.Store(true)
	done := make(chan error, 1)
	go func() {
		done <- ReadLogs(context.Background(), path, LogOptions{Follow: true, TailLines: -1, Stdout: &out, Poll: time.Millisecond}, alive.Load)
	}()
	testutil.Eventually(t, 10*time.Second, "the existing line", func() bool { return out.String() == "before\n" })
	var want strings.Builder
	want.WriteString("before\n")
	for i := range 12 { // several rotations at 100 bytes a file
		line := strings.Repeat(string(rune('a'+i)), 30)
		if err := w.entry("stdout", false, []byte(line)); err != nil {
			t.Fatal(err)
		}
		want.WriteString(line + "\n")
		// One line at a time, so that a rotation never drops a file the reader has not seen
		// (a reader slower than five rotations loses lines, as with a real kubelet).
		testutil.Eventually(t, 10*time.Second, "line "+line, func() bool { return out.String() == want.String() })
	}
	alive.Store(false)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
