package kubelet

// Container logs, kept as a kubelet keeps them: one file per container start,
// <pod dir>/<container>/<restart count>.log, in the CRI logging format
//
//	2026-12-05T08:00:00.000000001Z stdout F a whole line
//	2026-12-05T08:00:00.000000002Z stderr P the first 16 KiB of a longer line
//
// rotated by size (the full file renamed to <n>.log.<time>, the oldest removed beyond the
// configured count). The writer is a per-container shim process (`lab containerlog`), so that a
// container's output never depends on the kubelet being up; the reader serves `kubectl logs`
// (tail, since, timestamps, limitBytes, previous, follow across rotations).
//
// Rules: a line is written with one write(2), so a reader never sees half of one from a
// writer that is still running; the reader never holds a file open past its request.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"
)

const (
	// maxLogLine is the longest piece of a line written as one entry; longer lines are split
	// into partial (P) entries, as containerd does.
	maxLogLine = 16 << 10
	// DefaultLogMaxSize and DefaultLogMaxFiles are the kubelet's containerLogMaxSize and
	// containerLogMaxFiles defaults.
	DefaultLogMaxSize  = 10 << 20
	DefaultLogMaxFiles = 5
	logTimeFormat      = time.RFC3339Nano
	rotatedTimeFormat  = "20060102-150405.000000000"
)

// logWriter appends entries to a container's log file, rotating it by size.
type logWriter struct {
	mu       sync.Mutex
	path     string
	f        *os.File
	size     int64
	maxSize  int64
	maxFiles int
	now      func() time.Time
	buf      []byte
}

func openLogWriter(path string, maxSize int64, maxFiles int, now func() time.Time) (*logWriter, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	w := &logWriter{path: path, maxSize: maxSize, maxFiles: max(maxFiles, 1), now: now}
	return w, w.open()
}

func (w *logWriter) open() error {
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	w.f, w.size = f, st.Size()
	return nil
}

// entry writes one log entry: stream is "stdout" or "stderr", partial marks a piece of a line
// that continues in the next entry.
func (w *logWriter) entry(stream string, partial bool, line []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	tag := " F "
	if partial {
		tag = " P "
	}
	w.buf = w.now().UTC().AppendFormat(w.buf[:0], logTimeFormat)
	w.buf = append(append(append(w.buf, ' '), stream...), tag...)
	w.buf = append(append(w.buf, line...), '\n')
	if w.size > 0 && w.size+int64(len(w.buf)) > w.maxSize {
		if err := w.rotate(); err != nil {
			return err
		}
	}
	n, err := w.f.Write(w.buf)
	w.size += int64(n)
	return err
}

// rotate renames the full file aside, removes rotated files beyond maxFiles-1 and starts a new one.
func (w *logWriter) rotate() error {
	if err := w.f.Close(); err != nil {
		return err
	}
	if err := os.Rename(w.path, w.path+"."+w.now().UTC().Format(rotatedTimeFormat)); err != nil {
		return err
	}
	old, err := rotatedLogs(w.path)
	if err != nil {
		return err
	}
	for len(old) > w.maxFiles-1 {
		if err := os.Remove(old[0]); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		old = old[1:]
	}
	return w.open()
}

func (w *logWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.f.Close()
}

// rotatedLogs lists the rotated files of path, oldest first (the time suffix sorts).
func rotatedLogs(path string) ([]string, error) {
	m, err := filepath.Glob(globEscape(path) + ".*")
	slices.Sort(m)
	return m, err
}

func globEscape(s string) string {
	var b bytes.Buffer
	for _, r := range s {
		if r == '*' || r == '?' || r == '[' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// copyStream writes r's lines to w as entries of stream until r ends.
func copyStream(w *logWriter, stream string, r io.Reader) error {
	br := bufio.NewReaderSize(r, maxLogLine)
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			if werr := w.entry(stream, false, line[:len(line)-1]); werr != nil {
				return werr
			}
		case errors.Is(err, bufio.ErrBufferFull):
			if werr := w.entry(stream, true, line); werr != nil {
				return werr
			}
		case errors.Is(err, io.EOF):
			if len(line) > 0 {
				return w.entry(stream, false, line)
			}
			return nil
		default:
			return err
		}
	}
}

// RunLogShim copies a container's stdout and stderr into its log file at path until both end
// (the container and everything it started closed them): the body of `lab containerlog`.
func RunLogShim(path string, stdout, stderr io.Reader, maxSize int64, maxFiles int) error {
	w, err := openLogWriter(path, maxSize, maxFiles, time.Now)
	if err != nil {
		return err
	}
	errs := make(chan error, 2)
	go func() { errs <- copyStream(w, "stdout", stdout) }()
	go func() { errs <- copyStream(w, "stderr", stderr) }()
	return errors.Join(<-errs, <-errs, w.Close())
}

// LogOptions selects what a log read returns (the kubelet's PodLogOptions).
type LogOptions struct {
	Follow     bool
	TailLines  int64 // < 0: all
	Since      time.Time
	Timestamps bool
	LimitBytes int64 // <= 0: no limit
	// Stdout and Stderr receive their streams' lines; a nil writer drops that stream.
	Stdout, Stderr io.Writer
	// Poll is how often a follow looks for new lines (0: 100 ms).
	Poll time.Duration
}

// logEntry is one parsed line of a log file.
type logEntry struct {
	ts      []byte
	stream  []byte
	partial bool
	content []byte
}

func parseLogEntry(line []byte) (logEntry, error) {
	var e logEntry
	var ok bool
	e.ts, line, ok = bytes.Cut(line, []byte{' '})
	if ok {
		e.stream, line, ok = bytes.Cut(line, []byte{' '})
	}
	var tag []byte
	if ok {
		tag, e.content, ok = bytes.Cut(line, []byte{' '})
	}
	if !ok || (string(tag) != "F" && string(tag) != "P") {
		return e, fmt.Errorf("not a CRI log line: %q", line)
	}
	e.partial = tag[0] == 'P'
	return e, nil
}

// logOutput writes entries per the options, counting toward the byte limit.
type logOutput struct {
	o       LogOptions
	written int64
}

var errLimit = errors.New("log byte limit reached")

func (lo *logOutput) write(e logEntry) error {
	if !lo.o.Since.IsZero() {
		ts, err := time.Parse(logTimeFormat, string(e.ts))
		if err == nil && ts.Before(lo.o.Since) {
			return nil
		}
	}
	var w io.Writer
	switch string(e.stream) {
	case "stdout":
		w = lo.o.Stdout
	case "stderr":
		w = lo.o.Stderr
	}
	if w == nil {
		return nil
	}
	var b []byte
	if lo.o.Timestamps {
		b = append(append(b, e.ts...), ' ')
	}
	b = append(b, e.content...)
	if !e.partial {
		b = append(b, '\n')
	}
	if lo.o.LimitBytes > 0 && lo.written+int64(len(b)) > lo.o.LimitBytes {
		b = b[:lo.o.LimitBytes-lo.written]
	}
	n, err := w.Write(b)
	lo.written += int64(n)
	if err == nil && lo.o.LimitBytes > 0 && lo.written >= lo.o.LimitBytes {
		return errLimit
	}
	return err
}

// ReadLogs writes the container log at path (and its rotated files) per o. With o.Follow it then
// waits for new lines, across rotations, until ctx ends or running reports the container gone
// and its file is drained.
func ReadLogs(ctx context.Context, path string, o LogOptions, running func() bool) error {
	out := &logOutput{o: o}
	err := readLogs(ctx, path, out, running)
	if errors.Is(err, errLimit) {
		return nil
	}
	return err
}

func readLogs(ctx context.Context, path string, out *logOutput, running func() bool) error {
	files, err := rotatedLogs(path)
	if err != nil {
		return err
	}
	// The current file is opened before the rotated ones are read, so that a rotation meanwhile
	// is seen as a change of file rather than losing its lines.
	cur, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { cur.Close() }()
	var tail [][]byte // the last TailLines lines, when a tail is asked for
	emit := func(line []byte) error {
		if out.o.TailLines < 0 {
			return writeLine(out, line)
		}
		if out.o.TailLines == 0 {
			return nil
		}
		if int64(len(tail)) == out.o.TailLines {
			tail = tail[1:]
		}
		tail = append(tail, bytes.Clone(line))
		return nil
	}
	for _, f := range files {
		if err := eachLine(f, emit); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	r := bufio.NewReader(cur)
	var pending []byte // a line not yet ended by a newline
	drain := func(emit func([]byte) error) error {
		for {
			line, err := r.ReadBytes('\n')
			pending = append(pending, line...)
			if err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			if err := emit(bytes.TrimSuffix(pending, []byte{'\n'})); err != nil {
				return err
			}
			pending = pending[:0]
		}
	}
	if err := drain(emit); err != nil {
		return err
	}
	for _, line := range tail {
		if err := writeLine(out, line); err != nil {
			return err
		}
	}
	if !out.o.Follow {
		return nil
	}
	t := time.NewTicker(cmp.Or(out.o.Poll, 100*time.Millisecond))
	defer t.Stop()
	for {
		alive := running()
		if err := drain(func(l []byte) error { return writeLine(out, l) }); err != nil {
			return err
		}
		if rotated(cur, path) {
			// The writer moved on: what is left in the old file was drained above.
			next, err := os.Open(path)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			if err == nil {
				cur.Close()
				cur, pending = next, pending[:0]
				r.Reset(cur)
				continue
			}
		}
		if !alive {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// rotated reports whether path no longer names the file f has open.
func rotated(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && !os.SameFile(a, b)
}

func writeLine(out *logOutput, line []byte) error {
	e, err := parseLogEntry(line)
	if err != nil {
		return nil // a line the shim did not write (a truncated file): skip it
	}
	return out.write(e)
}

func eachLine(path string, fn func([]byte) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 2*maxLogLine)
	for sc.Scan() {
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	return sc.Err()
}

// containerLogPath is where the log of a container's start number restart is kept.
func containerLogPath(podDir, container string, restart int32) string {
	return filepath.Join(podDir, container, strconv.Itoa(int(restart))+".log")
}
