package mcpgw

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"
	"unsafe"

	"github.com/mcpagent/mcpagent/internal/netnstest"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// mptcpToken returns the local token of the MPTCP connection c
// (getsockopt MPTCP_INFO, struct mptcp_info in include/uapi/linux/mptcp.h:
// six u8 fields, u32 flags, then u32 token at offset 12).
func mptcpToken(t *testing.T, c *net.TCPConn) uint32 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	var gerr error
	rc.Control(func(fd uintptr) {
		l := uint32(len(buf))
		const mptcpInfo = 1
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_MPTCP, mptcpInfo,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
		if errno != 0 {
			gerr = errno
		}
	})
	if gerr != nil {
		t.Fatalf("getsockopt MPTCP_INFO: %v", gerr)
	}
	return binary.NativeEndian.Uint32(buf[12:16])
}

// TestIntegrationLocalToken checks the kernel lookup the on-path MCP's
// MP_JOIN decision rests on: MPTCP socket diagnostics find a connection of
// this namespace by its token, and no other token.
func TestIntegrationLocalToken(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ln := l.(*net.TCPListener)
	var d net.Dialer
	d.SetMultipathTCP(true)
	cc, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	diag, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer diag.Close()
	r := &onPathRuntime{diag: diag}
	tok := mptcpToken(t, sc)
	for _, tt := range []struct {
		name string
		tok  uint32
		want bool
	}{
		{"server side", tok, true},
		{"client side", mptcpToken(t, cc.(*net.TCPConn)), true},
		{"unknown", tok ^ 0x5a5a5a5a, false},
	} {
		got, err := r.localToken(tt.tok)
		if err != nil || got != tt.want {
			t.Errorf("%s: localToken(%#x) = %v, %v; want %v", tt.name, tt.tok, got, err, tt.want)
		}
	}
	sc.Close()
	cc.Close()
}

// TestIdlestPort checks the choice of the listener a busier port may take
// over: the open one whose last SYN is oldest, and only if that is before
// the cutoff.
func TestIdlestPort(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	open := func(s int) *portListener {
		return &portListener{ln: &net.TCPListener{}, lastSYN: t0.Add(time.Duration(s) * time.Second)}
	}
	opening := &portListener{lastSYN: t0} // its listener is being opened
	ports := map[portKey]*portListener{
		{port: 80}:            open(5),
		{port: 443}:           open(2),
		{v6: true, port: 443}: open(3),
		{port: 22}:            opening,
	}
	tests := []struct {
		cutoff int // seconds after t0
		want   portKey
		found  bool
	}{
		{cutoff: 10, want: portKey{port: 443}, found: true},
		{cutoff: 3, want: portKey{port: 443}, found: true},
		{cutoff: 2}, // no open listener's last SYN is before it
		{cutoff: 0},
	}
	for _, tc := range tests {
		got, found := idlestPort(ports, t0.Add(time.Duration(tc.cutoff)*time.Second))
		if found != tc.found || got != tc.want {
			t.Errorf("cutoff %ds: idlestPort = %+v, %v; want %+v, %v", tc.cutoff, got, found, tc.want, tc.found)
		}
	}
}
