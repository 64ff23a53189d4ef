package testutil

import (
	"bytes"
	"sync"
)

// LogBuffer is a log destination a test reads while the code under test writes to it (an
// slog handler's writer): Write and String are safe together.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
