package sockopt

import (
	"context"
	"net"
	"os"
	"testing"

	"github.com/mcpagent/mcpagent/internal/netnstest"
)

func TestMain(m *testing.M) { netnstest.Main(m) }

// With both ports of the range held by connections from 127.0.0.2 to one
// listener, a dial from 127.0.0.2 to another listener fails at bind, and
// succeeds with BindAddressNoPort.
func TestIntegrationBindAddressNoPort(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("40000 40001"), 0o644); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, addr := range []string{"127.0.0.1:5001", "127.0.0.1:5002"} { // outside the range
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addrs = append(addrs, addr)
	}
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
	for range 2 {
		c, err := (&net.Dialer{LocalAddr: local, Control: BindAddressNoPort}).DialContext(context.Background(), "tcp4", addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if c, err := (&net.Dialer{LocalAddr: local}).DialContext(context.Background(), "tcp4", addrs[1]); err == nil {
		c.Close()
		t.Fatal("a dial bound to 127.0.0.2 found a free port: the test proves nothing")
	}
	c, err := (&net.Dialer{LocalAddr: local, Control: BindAddressNoPort}).DialContext(context.Background(), "tcp4", addrs[1])
	if err != nil {
		t.Fatalf("with BindAddressNoPort: %v", err)
	}
	c.Close()
}
