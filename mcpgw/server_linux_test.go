package mcpgw

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mcpagent/mcpagent/mptcpleg"
)

// TestReadHeaderTakesFirstData checks that the client's first data, when it
// has arrived with the header, comes back whole as extra (to reach the
// server in one write) and that a read never takes more than firstReadLen.
func TestReadHeaderTakesFirstData(t *testing.T) {
	s, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}})
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := mptcpleg.AppendHeader(nil, mptcpleg.Option{Protocol: mptcpleg.ProtocolTCP, Addr: netip.MustParseAddr("2001:db8::1"), Port: 443})
	if err != nil {
		t.Fatal(err)
	}
	request := bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 80) // 1,280 bytes, one segment
	long := bytes.Repeat([]byte{'x'}, 3*firstReadLen)
	for _, tc := range []struct {
		name      string
		sent      []byte
		wantExtra []byte
	}{
		{"header alone", hdr, nil},
		{"header and a request", append(hdr, request...), request},
		{"more than one read", append(hdr, long...), long[:firstReadLen-len(hdr)]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leg, client := tcpPair(t)
			if _, err := client.Write(tc.sent); err != nil {
				t.Fatal(err)
			}
			// All of it is in leg's receive queue before the read.
			waitReadable(t, leg, len(tc.sent))
			opts, extra, reason, err := s.readHeader(context.Background(), leg)
			if reason != "" || err != nil {
				t.Fatalf("readHeader: reason %q, err %v", reason, err)
			}
			if len(opts) != 1 || opts[0].Port != 443 {
				t.Errorf("options %+v, want the destination port 443", opts)
			}
			if !bytes.Equal(extra, tc.wantExtra) {
				t.Errorf("extra: %d bytes, want %d", len(extra), len(tc.wantExtra))
			}
		})
	}
}

// tcpPair returns both ends of a loopback TCP connection, closed when t ends.
func tcpPair(t *testing.T) (accepted, dialed *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dialed.Close() })
	accepted, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return accepted, dialed
}

// waitReadable waits until c has n bytes to read.
func waitReadable(t *testing.T, c *net.TCPConn, n int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var queued int
		var qerr error
		if err := rc.Control(func(fd uintptr) { queued, qerr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
			t.Fatal(err)
		}
		if qerr != nil {
			t.Fatalf("SIOCINQ: %v", qerr)
		}
		if queued >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes arrived", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
}
