package certs

import (
	"testing"

	"go.uber.org/goleak"
)

// The Manager owns fetch goroutines and DialCA gRPC's; none may outlive a test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
