package xdsclient

import (
	"testing"

	"go.uber.org/goleak"
)

// Run owns goroutines (gRPC's, per connection); none may outlive a test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
