package testutil

import (
	"os"
	"testing"
)

// SkipOrFail is the one way a test may skip: when it lacks root or a kernel feature. Under
// CI=true it fails instead, so CI never passes by skipping.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: not skipping)", reason)
	}
	t.Skip(reason)
}

// RequireRoot skips (or fails, see SkipOrFail) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root (network namespaces, eBPF)")
	}
}
