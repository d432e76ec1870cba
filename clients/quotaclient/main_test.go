package quotaclient_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a test starts (brokers, servers, SDK stream readers,
// settlement callbacks) has stopped when the tests end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
