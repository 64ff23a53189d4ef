// Package accesslog writes access log lines, one per request (the waypoint) or per connection
// (ztunnel), without log/slog: at a thousand requests a second slog's generic path (a stack
// walk for the caller, an interface per attribute, the handler's attribute walk) cost the
// waypoint 14% of its CPU. A line is built in a pooled buffer and written with one Write,
// which internal/logwriter batches.
//
// Rules kept here:
//   - A line is exactly what slog.NewJSONHandler would write for the same record: the time
//     (RFC 3339, nanoseconds), level INFO, msg "access", the Logger's attributes, then the
//     line's in order. Log pipelines that read either see one format (TestSameAsSlog).
//   - Strings are escaped as slog escapes them; keys are the callers' constants and are
//     written as given.
//   - A nil *Logger drops lines.
package accesslog

import (
	"io"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Logger writes access log lines to a writer. It is safe for concurrent use.
type Logger struct {
	w     io.Writer
	attrs []byte // `,"k":"v"` for each attribute given to New
	now   func() time.Time
	pool  sync.Pool
}

// New returns a Logger writing to w (nil: os.Stdout), each line carrying attrs (key, value
// pairs). Lines are written from the goroutines that make them, at once: w must be safe for
// concurrent use.
func New(w io.Writer, attrs ...string) *Logger {
	if w == nil {
		w = os.Stdout
	}
	l := &Logger{w: w, now: time.Now}
	for i := 0; i+1 < len(attrs); i += 2 {
		l.attrs = appendKey(l.attrs, attrs[i])
		l.attrs = appendString(l.attrs, attrs[i+1])
	}
	l.pool.New = func() any { return &Line{b: make([]byte, 0, 512)} }
	return l
}

// Line is one line being built. Its methods return it, to chain; Write ends it.
type Line struct {
	l *Logger
	b []byte
}

// Line starts a line with msg "access". On a nil Logger it returns a Line that drops itself.
func (l *Logger) Line() *Line {
	if l == nil {
		return nil
	}
	ln := l.pool.Get().(*Line)
	ln.l = l
	b := append(ln.b[:0], `{"time":"`...)
	b = l.now().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"access"`...)
	ln.b = append(b, l.attrs...)
	return ln
}

// Str adds a string attribute.
func (ln *Line) Str(k, v string) *Line {
	if ln != nil {
		ln.b = appendString(appendKey(ln.b, k), v)
	}
	return ln
}

// Int adds an integer attribute.
func (ln *Line) Int(k string, v int64) *Line {
	if ln != nil {
		ln.b = strconv.AppendInt(appendKey(ln.b, k), v, 10)
	}
	return ln
}

// Write ends the line and writes it; the Line must not be used afterwards. A write error is
// dropped, as slog drops it: an access log never fails a request.
func (ln *Line) Write() {
	if ln == nil {
		return
	}
	ln.b = append(ln.b, "}\n"...)
	_, _ = ln.l.w.Write(ln.b)
	if cap(ln.b) <= 64<<10 { // an outsized line's buffer is not kept
		l := ln.l
		ln.l = nil
		l.pool.Put(ln)
	}
}

func appendKey(b []byte, k string) []byte {
	b = append(b, ',', '"')
	b = append(b, k...)
	return append(b, '"', ':')
}

const hex = "0123456789abcdef"

// appendString appends s quoted and escaped as slog's JSON handler (and encoding/json without
// HTML escaping) does: quotes, backslashes and control characters escaped, invalid UTF-8 as
// U+FFFD, and U+2028 and U+2029 escaped for JavaScript.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
