package mptcppm

import (
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var capture = flag.Bool("capture", false, "rewrite testdata/*.hex with messages captured from the running kernel")

// TestIntegrationCapture records the kernel's replies and events that
// parse_test.go decodes. It runs only with -capture:
//
//	go test ./mptcppm -run TestIntegrationCapture -capture
//
// (as root, so that it runs in a namespace of its own). Tokens and ports
// differ on every run, so the expectations in parse_test.go must be updated
// after recapturing.
func TestIntegrationCapture(t *testing.T) {
	if !*capture {
		t.Skip("run with -capture to rewrite testdata from the running kernel")
	}
	c := dialTest(t)
	kernel := kernelRelease(t)

	// Endpoints and limits.
	for _, e := range []Endpoint{
		{Addr: netip.MustParseAddr("10.0.0.1"), Flags: FlagSubflow},
		{Addr: netip.MustParseAddr("127.0.0.3"), Port: 4000, Flags: FlagSignal},
		{Addr: netip.MustParseAddr("fd00::1"), Flags: FlagSubflow | FlagBackup | FlagFullmesh, IfIndex: 1},
		{ID: 200, Addr: netip.MustParseAddr("10.0.0.2"), Flags: FlagLaminar},
	} {
		if _, err := c.AddEndpoint(e); err != nil {
			t.Fatal(err)
		}
	}
	dump, err := c.execute(cmdGetAddr, netlink.Dump, nil)
	if err != nil {
		t.Fatal(err)
	}
	get, err := c.execute(cmdGetAddr, 0, mustEndpointRequest(t, Endpoint{ID: 200}))
	if err != nil {
		t.Fatal(err)
	}
	writeHex(t, "endpoints.hex", []string{
		"Replies to GET_ADDR: a dump of four endpoints, then endpoint 200 alone.",
		"Added: 10.0.0.1 subflow; 127.0.0.3 port 4000 signal; fd00::1 dev lo",
		"subflow backup fullmesh; id 200 10.0.0.2 laminar.",
	}, kernel, labelled("dump", dump), labelled("get", get))
	if err := c.FlushEndpoints(); err != nil {
		t.Fatal(err)
	}

	if err := c.SetLimits(Limits{AddAddrAccepted: 3, Subflows: 5}); err != nil {
		t.Fatal(err)
	}
	limits, err := c.execute(cmdGetLimits, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeHex(t, "limits.hex", []string{"Reply to GET_LIMITS after SET_LIMITS add_addr_accepted 3 subflows 5."},
		kernel, labelled("get", limits))

	// IPv4 events: a subflow endpoint and a signal endpoint with a port,
	// both used by the client and the server, which share the namespace.
	if err := c.SetLimits(Limits{AddAddrAccepted: 2, Subflows: 4}); err != nil {
		t.Fatal(err)
	}
	ec := rawEvents(t)
	sub, err := c.AddEndpoint(Endpoint{Addr: lo4b, Flags: FlagSubflow})
	if err != nil {
		t.Fatal(err)
	}
	sig, err := c.AddEndpoint(Endpoint{Addr: netip.MustParseAddr("127.0.0.3"), Port: 4000, Flags: FlagSignal})
	if err != nil {
		t.Fatal(err)
	}
	srv := startEcho(t, "127.0.0.1:0")
	conn := dialEcho(t, srv)
	settle()
	if err := c.SetFlags(sub.ID, FlagBackup); err != nil {
		t.Fatal(err)
	}
	settle()
	if err := c.DeleteEndpoint(sig.ID); err != nil {
		t.Fatal(err)
	}
	settle()
	conn.Close()
	settle()
	writeHex(t, "events_ipv4.hex", []string{
		"Events of one MPTCP connection 127.0.0.1 -> 127.0.0.1 (an echo server in the same",
		"namespace) with endpoints 127.0.0.2 subflow and 127.0.0.3 port 4000 signal;",
		"then endpoint 127.0.0.2 set to backup, endpoint 127.0.0.3 deleted, the client closed.",
		fmt.Sprintf("Client %s, server %s.", conn.LocalAddr(), srv),
	}, kernel, drain(t, ec))
	if err := c.FlushEndpoints(); err != nil {
		t.Fatal(err)
	}

	// IPv6 events: a subflow endpoint bound to lo, so that the kernel
	// reports the interface. ::1 takes no subflows from other sources,
	// so both ends use addresses added to lo.
	lo, err := vnl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	v6a, v6b := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	for _, a := range []netip.Addr{v6a, v6b} {
		if err := vnl.AddrAdd(lo, &vnl.Addr{IPNet: vnl.NewIPNet(net.IP(a.AsSlice())), Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.AddEndpoint(Endpoint{Addr: v6b, Flags: FlagSubflow | FlagBackup, IfIndex: lo.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	srv6 := startEcho(t, "[fd00::1]:0")
	conn6 := dialEcho(t, srv6)
	settle()
	conn6.Close()
	settle()
	writeHex(t, "events_ipv6.hex", []string{
		"Events of one MPTCP connection fd00::1 -> fd00::1 with endpoint fd00::2 dev lo",
		"subflow backup.",
		fmt.Sprintf("Client %s, server %s.", conn6.LocalAddr(), srv6),
	}, kernel, drain(t, ec))
}

// settle gives the kernel time to finish what the last step started.
func settle() { time.Sleep(300 * time.Millisecond) }

func kernelRelease(t *testing.T) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

// rawEvents returns an EventConn whose raw messages drain reads.
func rawEvents(t *testing.T) *EventConn {
	ec, err := ListenEvents()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ec.Close() })
	return ec
}

// drain returns the event messages ec has queued, labelled by event type.
func drain(t *testing.T, ec *EventConn) []labelledMsg {
	var all []genetlink.Message
	for {
		if err := ec.c.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		msgs, _, err := ec.c.Receive()
		if os.IsTimeout(err) {
			return labelledBy(all, func(m genetlink.Message) string { return EventType(m.Header.Command).String() })
		}
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, msgs...)
	}
}

type labelledMsg struct {
	label string
	msg   genetlink.Message
}

func labelled(label string, msgs []genetlink.Message) []labelledMsg {
	return labelledBy(msgs, func(genetlink.Message) string { return label })
}

// labelledBy labels each message name#n, counting per name from 1.
func labelledBy(msgs []genetlink.Message, name func(genetlink.Message) string) []labelledMsg {
	n := make(map[string]int)
	var out []labelledMsg
	for _, m := range msgs {
		l := name(m)
		n[l]++
		out = append(out, labelledMsg{fmt.Sprintf("%s#%d", l, n[l]), m})
	}
	return out
}

// writeHex writes messages to testdata/name in the format readHex reads.
func writeHex(t *testing.T, name string, about []string, kernel string, groups ...[]labelledMsg) {
	var b strings.Builder
	for _, l := range about {
		fmt.Fprintf(&b, "# %s\n", l)
	}
	fmt.Fprintf(&b, "# Captured from Linux %s by TestIntegrationCapture (go test -run TestIntegrationCapture -capture).\n", kernel)
	b.WriteString("# Each line: label, then the generic netlink message (header and attributes) in hex.\n")
	for _, g := range groups {
		for _, m := range g {
			raw, err := m.msg.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s %s\n", m.label, hex.EncodeToString(raw))
		}
	}
	if err := os.WriteFile(filepath.Join("testdata", name), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote testdata/%s:\n%s", name, b.String())
}
