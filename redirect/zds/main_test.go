package zds

import (
	"testing"

	"go.uber.org/goleak"
)

// Servers and clients own goroutines (one reader and one writer per connection) and fds; none
// may outlive a test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
