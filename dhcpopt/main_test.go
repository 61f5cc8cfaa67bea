package dhcpopt

import (
	"testing"

	"github.com/mcpagent/mcpagent/internal/netnstest"
)

func TestMain(m *testing.M) { netnstest.Main(m) }
