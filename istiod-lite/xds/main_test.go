package xds

import (
	"testing"

	"go.uber.org/goleak"
)

// Streams own goroutines (the receive loop); none may outlive a test's server.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
