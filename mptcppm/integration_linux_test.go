package mptcppm

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/internal/netnstest"
	"golang.org/x/sys/unix"
)

// The tests of one binary share the network namespace netnstest.Main
// made, so each test starts from no endpoints and the default limits and
// puts them back when it ends.

// dialTest returns a Client on a namespace with no endpoints, and restores
// that and the limits when the test ends.
func dialTest(t *testing.T) *Client {
	t.Helper()
	netnstest.RequireIsolatedRoot(t)
	c, err := Dial()
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	if err := c.FlushEndpoints(); err != nil {
		t.Fatalf("FlushEndpoints: %v", err)
	}
	limits, err := c.Limits()
	if err != nil {
		t.Fatalf("Limits: %v", err)
	}
	t.Cleanup(func() {
		if err := c.FlushEndpoints(); err != nil {
			t.Errorf("cleanup: FlushEndpoints: %v", err)
		}
		if err := c.SetLimits(limits); err != nil {
			t.Errorf("cleanup: SetLimits: %v", err)
		}
		c.Close()
	})
	return c
}

// listenEvents returns a channel of the events an EventConn of types (none:
// all) receives; the EventConn is closed and its receiving goroutine waited
// for when the test ends.
func listenEvents(t *testing.T, types ...EventType) <-chan Event {
	t.Helper()
	ec, err := ListenEvents(types...)
	if err != nil {
		t.Fatalf("ListenEvents: %v", err)
	}
	ch := make(chan Event, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			evs, err := ec.Receive()
			for _, ev := range evs {
				ch <- ev
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				t.Errorf("Receive: %v", err)
				return
			}
		}
	}()
	t.Cleanup(func() {
		ec.Close()
		<-done
	})
	return ch
}

// waitEvent consumes events until one satisfies match, failing the test
// after 5 s.
func waitEvent(t *testing.T, ch <-chan Event, what string, match func(Event) bool) Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-ch:
			t.Logf("event %+v", ev)
			if match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event within 5 s", what)
		}
	}
}

// startEcho starts an MPTCP echo server on addr and stops it when the
// test ends.
func startEcho(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.Copy(c, c)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// dialEcho opens an MPTCP connection to an echo server and checks that
// it echoes.
func dialEcho(t *testing.T, addr netip.AddrPort) *net.TCPConn {
	t.Helper()
	var d net.Dialer
	d.SetMultipathTCP(true)
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if mp, err := c.(*net.TCPConn).MultipathTCP(); err != nil || !mp {
		t.Fatalf("connection to %s is not MPTCP (err %v)", addr, err)
	}
	msg := []byte("ping")
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	return c.(*net.TCPConn)
}

var (
	lo4  = netip.MustParseAddr("127.0.0.1")
	lo4b = netip.MustParseAddr("127.0.0.2")
)

func TestIntegrationEndpoints(t *testing.T) {
	c := dialTest(t)

	combos := []Flags{
		FlagSignal,
		FlagSubflow,
		FlagSignal | FlagBackup,
		FlagSubflow | FlagBackup,
		FlagSubflow | FlagFullmesh,
		FlagSubflow | FlagBackup | FlagFullmesh,
		FlagSignal | FlagSubflow,
		FlagLaminar,
	}
	withFlags := func(prefix string) []Endpoint {
		var eps []Endpoint
		for i, f := range combos {
			eps = append(eps, Endpoint{Addr: netip.MustParseAddr(prefix + string(rune('1'+i))), Flags: f})
		}
		return eps
	}
	const loIndex = 1 // lo is always interface 1

	// The kernel holds at most 8 endpoints (MPTCP_PM_ADDR_MAX), so each
	// group is added, checked and flushed on its own.
	for _, tt := range []struct {
		name string
		add  []Endpoint
	}{
		{"ipv4 flags", withFlags("10.0.0.")},
		{"ipv6 flags", withFlags("fd00::")},
		{"port interface id", []Endpoint{
			// With a port the kernel listens on it, so the address
			// must be local.
			{Addr: netip.MustParseAddr("127.0.1.1"), Port: 4000, Flags: FlagSignal},
			{Addr: netip.MustParseAddr("::1"), Port: 4001, Flags: FlagSignal | FlagBackup},
			{Addr: netip.MustParseAddr("10.0.1.2"), Flags: FlagSubflow, IfIndex: loIndex},
			{Addr: netip.MustParseAddr("fd00::1:2"), Flags: FlagSubflow | FlagBackup, IfIndex: loIndex},
			{ID: 200, Addr: netip.MustParseAddr("10.0.1.3"), Flags: FlagSubflow},
			{ID: 255, Addr: netip.MustParseAddr("fd00::1:3"), Flags: FlagSignal},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Cleanup(func() {
				if err := c.FlushEndpoints(); err != nil {
					t.Errorf("FlushEndpoints: %v", err)
				}
			})
			var want []Endpoint
			ids := make(map[uint8]bool)
			for _, e := range tt.add {
				got, err := c.AddEndpoint(e)
				if err != nil {
					t.Fatalf("AddEndpoint(%+v): %v", e, err)
				}
				w := e
				if w.ID == 0 {
					if got.ID == 0 || ids[got.ID] {
						t.Errorf("AddEndpoint(%+v) got ID %d, want a new non-zero ID", e, got.ID)
					}
					w.ID = got.ID
				}
				ids[got.ID] = true
				if diff := cmp.Diff(w, got, cmpAddr); diff != "" {
					t.Errorf("AddEndpoint(%+v) (-want +got):\n%s", e, diff)
				}
				want = append(want, w)
			}

			eps, err := c.Endpoints()
			if err != nil {
				t.Fatalf("Endpoints: %v", err)
			}
			if diff := cmp.Diff(want, eps, cmpAddr); diff != "" {
				t.Errorf("Endpoints (-want +got):\n%s", diff)
			}
			for _, w := range want {
				got, err := c.Endpoint(w.ID)
				if err != nil {
					t.Fatalf("Endpoint(%d): %v", w.ID, err)
				}
				if diff := cmp.Diff(w, got, cmpAddr); diff != "" {
					t.Errorf("Endpoint(%d) (-want +got):\n%s", w.ID, diff)
				}
			}
		})
	}

	t.Run("refused", func(t *testing.T) {
		t.Cleanup(func() { c.FlushEndpoints() })
		first := Endpoint{Addr: netip.MustParseAddr("10.0.2.1"), Flags: FlagSubflow}
		if _, err := c.AddEndpoint(first); err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			name string
			e    Endpoint
			want error
		}{
			{"duplicate address", first, unix.EEXIST},
			{"implicit flag", Endpoint{Addr: netip.MustParseAddr("10.0.2.2"), Flags: FlagImplicit}, unix.EINVAL},
			{"port on subflow endpoint", Endpoint{Addr: netip.MustParseAddr("10.0.2.3"), Port: 1, Flags: FlagSubflow}, unix.EINVAL},
			{"signal and fullmesh", Endpoint{Addr: netip.MustParseAddr("10.0.2.4"), Flags: FlagSignal | FlagFullmesh}, unix.EINVAL},
		} {
			if _, err := c.AddEndpoint(tt.e); !errors.Is(err, tt.want) {
				t.Errorf("%s: AddEndpoint(%+v) = %v, want %v", tt.name, tt.e, err, tt.want)
			}
		}
		for i := 2; i <= 8; i++ {
			if _, err := c.AddEndpoint(Endpoint{Addr: netip.AddrFrom4([4]byte{10, 0, 3, byte(i)}), Flags: FlagSignal}); err != nil {
				t.Fatalf("AddEndpoint #%d: %v", i, err)
			}
		}
		if _, err := c.AddEndpoint(Endpoint{Addr: netip.MustParseAddr("10.0.3.9"), Flags: FlagSignal}); !errors.Is(err, unix.ERANGE) {
			t.Errorf("AddEndpoint #9 = %v, want ERANGE (the kernel's limit is 8)", err)
		}
		if _, err := c.Endpoint(99); !errors.Is(err, unix.EINVAL) {
			t.Errorf("Endpoint(99) = %v, want EINVAL (no such endpoint)", err)
		}
		if err := c.DeleteEndpoint(0); err == nil {
			t.Error("DeleteEndpoint(0) succeeded, want an error")
		}
	})
}

func TestIntegrationSetFlagsDeleteFlush(t *testing.T) {
	c := dialTest(t)
	sub, err := c.AddEndpoint(Endpoint{Addr: netip.MustParseAddr("10.0.0.1"), Flags: FlagSubflow})
	if err != nil {
		t.Fatal(err)
	}
	sig, err := c.AddEndpoint(Endpoint{Addr: netip.MustParseAddr("fd00::1"), Flags: FlagSignal})
	if err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name string
		set  Flags
		want Flags
	}{
		{"backup on", FlagBackup, FlagSubflow | FlagBackup},
		{"backup off", 0, FlagSubflow},
		{"fullmesh and backup on", FlagFullmesh | FlagBackup, FlagSubflow | FlagFullmesh | FlagBackup},
		// Only backup and fullmesh change: signal is ignored, and so is
		// the missing subflow bit.
		{"other bits ignored", FlagSignal, FlagSubflow},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.SetFlags(sub.ID, tt.set); err != nil {
				t.Fatalf("SetFlags(%d, %s): %v", sub.ID, tt.set, err)
			}
			got, err := c.Endpoint(sub.ID)
			if err != nil {
				t.Fatalf("Endpoint(%d): %v", sub.ID, err)
			}
			if got.Flags != tt.want {
				t.Errorf("flags after SetFlags(%s) = %s, want %s", tt.set, got.Flags, tt.want)
			}
		})
	}
	// The kernel refuses fullmesh on a signal endpoint.
	if err := c.SetFlags(sig.ID, FlagFullmesh); !errors.Is(err, unix.EINVAL) {
		t.Errorf("SetFlags(signal endpoint, fullmesh) = %v, want EINVAL", err)
	}

	if err := c.DeleteEndpoint(sub.ID); err != nil {
		t.Fatalf("DeleteEndpoint(%d): %v", sub.ID, err)
	}
	if err := c.DeleteEndpoint(sub.ID); !errors.Is(err, unix.EINVAL) {
		t.Errorf("second DeleteEndpoint(%d) = %v, want EINVAL", sub.ID, err)
	}
	eps, err := c.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Endpoint{sig}, eps, cmpAddr); diff != "" {
		t.Errorf("Endpoints after delete (-want +got):\n%s", diff)
	}

	if err := c.FlushEndpoints(); err != nil {
		t.Fatalf("FlushEndpoints: %v", err)
	}
	if eps, err := c.Endpoints(); err != nil || len(eps) != 0 {
		t.Errorf("Endpoints after flush = %v, %v; want none", eps, err)
	}
}

func TestIntegrationLimits(t *testing.T) {
	c := dialTest(t)
	for _, want := range []Limits{
		{AddAddrAccepted: 3, Subflows: 5},
		{AddAddrAccepted: 0, Subflows: 0},
		{AddAddrAccepted: 8, Subflows: 8},
	} {
		if err := c.SetLimits(want); err != nil {
			t.Fatalf("SetLimits(%+v): %v", want, err)
		}
		got, err := c.Limits()
		if err != nil {
			t.Fatalf("Limits: %v", err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Limits after SetLimits (-want +got):\n%s", diff)
		}
	}

	// Above 8 the kernel refuses, says why, and keeps the old limits.
	err := c.SetLimits(Limits{AddAddrAccepted: 1, Subflows: 9})
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("SetLimits(subflows 9) = %v, want EINVAL", err)
	}
	t.Logf("kernel's refusal: %v", err)
	got, err := c.Limits()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Limits{AddAddrAccepted: 8, Subflows: 8}); got != want {
		t.Errorf("Limits after refused SetLimits = %+v, want %+v", got, want)
	}
}

func TestIntegrationEvents(t *testing.T) {
	c := dialTest(t)
	if err := c.SetLimits(Limits{Subflows: 1}); err != nil {
		t.Fatal(err)
	}
	ep, err := c.AddEndpoint(Endpoint{Addr: lo4b, Flags: FlagSubflow})
	if err != nil {
		t.Fatal(err)
	}
	events := listenEvents(t)
	onlySub := listenEvents(t, EventSubEstablished)
	srv := startEcho(t, "127.0.0.1:0")
	conn := dialEcho(t, srv)
	client := conn.LocalAddr().(*net.TCPAddr).AddrPort()

	created := waitEvent(t, events, "client created", func(ev Event) bool {
		return ev.Type == EventCreated && !ev.ServerSide && ev.Sport == client.Port()
	})
	token := created.Token
	want := Event{
		Type: EventCreated, Token: token, Family: linuxAFInet,
		Saddr: lo4, Sport: client.Port(), Daddr: lo4, Dport: srv.Port(),
	}
	if diff := cmp.Diff(want, created, cmpAddr); diff != "" {
		t.Errorf("created event (-want +got):\n%s", diff)
	}

	established := waitEvent(t, events, "client established", func(ev Event) bool {
		return ev.Type == EventEstablished && ev.Token == token
	})
	want.Type = EventEstablished
	if diff := cmp.Diff(want, established, cmpAddr); diff != "" {
		t.Errorf("established event (-want +got):\n%s", diff)
	}

	sub := waitEvent(t, events, "client sub_established", func(ev Event) bool {
		return ev.Type == EventSubEstablished && ev.Token == token
	})
	if sub.Saddr != lo4b || sub.LocalID != ep.ID || sub.Daddr != lo4 || sub.Dport != srv.Port() ||
		sub.RemoteID != 0 || sub.Sport == 0 || sub.Backup {
		t.Errorf("sub_established = %+v, want a subflow from endpoint %d (%s) to %s", sub, ep.ID, lo4b, srv)
	}

	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, "client closed", func(ev Event) bool {
		return ev.Type == EventClosed && ev.Token == token
	})

	// The filtered listener got the same multicast: the sub_established
	// events of both ends, and none of the others.
	subs := 0
	for deadline := time.After(300 * time.Millisecond); ; {
		select {
		case ev := <-onlySub:
			if ev.Type != EventSubEstablished {
				t.Errorf("listener of sub_established only got %+v", ev)
			}
			subs++
			continue
		case <-deadline:
		}
		break
	}
	if subs == 0 {
		t.Error("listener of sub_established only got no event")
	}
}

func TestIntegrationClose(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	c, err := Dial()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Limits(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Limits after Close = %v, want net.ErrClosed", err)
	}

	ec, err := ListenEvents()
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := ec.Receive()
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Receive block
	if err := ec.Close(); err != nil {
		t.Fatalf("EventConn.Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Receive after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not unblock Receive")
	}
	if err := ec.Close(); err != nil {
		t.Errorf("second EventConn.Close: %v", err)
	}
}

// setSysctl writes a sysctl of the test's namespace and restores it when
// the test ends.
func setSysctl(t *testing.T, name, value string) {
	t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read sysctl %s: %v", name, err)
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		t.Fatalf("set sysctl %s=%s: %v", name, value, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(path, old, 0o644); err != nil {
			t.Errorf("restore sysctl %s: %v", name, err)
		}
	})
}

func TestIntegrationUserspacePM(t *testing.T) {
	c := dialTest(t)
	setSysctl(t, "net.mptcp.pm_type", "1") // userspace, for both ends
	events := listenEvents(t)
	srv := startEcho(t, "127.0.0.1:0")
	conn := dialEcho(t, srv)
	cli := conn.LocalAddr().(*net.TCPAddr).AddrPort()

	// Both ends are in this namespace: tell them apart by ports.
	var clientTok, serverTok uint32
	for clientTok == 0 || serverTok == 0 {
		ev := waitEvent(t, events, "established", func(ev Event) bool { return ev.Type == EventEstablished })
		switch {
		case !ev.ServerSide && ev.Sport == cli.Port():
			clientTok = ev.Token
		case ev.ServerSide && ev.Dport == cli.Port():
			serverTok = ev.Token
		}
	}

	// The server announces 127.0.0.3; the client hears of it.
	lo3 := netip.MustParseAddr("127.0.0.3")
	if err := c.Announce(serverTok, Endpoint{ID: 5, Addr: lo3, Flags: FlagSignal}); err != nil {
		t.Fatalf("Announce: %v", err)
	}
	ann := waitEvent(t, events, "client announced", func(ev Event) bool {
		return ev.Type == EventAnnounced && ev.Token == clientTok
	})
	if ann.RemoteID != 5 || ann.Daddr != lo3 {
		t.Errorf("announced = %+v, want id 5 address %s", ann, lo3)
	}

	// The client opens a subflow from 127.0.0.2 and closes it again.
	if err := c.CreateSubflow(clientTok, Endpoint{ID: 7, Addr: lo4b}, srv); err != nil {
		t.Fatalf("CreateSubflow: %v", err)
	}
	sub := waitEvent(t, events, "client sub_established", func(ev Event) bool {
		return ev.Type == EventSubEstablished && ev.Token == clientTok
	})
	if sub.Saddr != lo4b || sub.LocalID != 7 || sub.Daddr != srv.Addr() || sub.Dport != srv.Port() {
		t.Errorf("sub_established = %+v, want id 7 from %s to %s", sub, lo4b, srv)
	}
	local := netip.AddrPortFrom(sub.Saddr, sub.Sport)
	if err := c.DestroySubflow(clientTok, local, srv); err != nil {
		t.Fatalf("DestroySubflow: %v", err)
	}
	waitEvent(t, events, "client sub_closed", func(ev Event) bool {
		return ev.Type == EventSubClosed && ev.Token == clientTok && ev.Sport == local.Port()
	})

	// The server withdraws 127.0.0.3.
	if err := c.Remove(serverTok, 5); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	waitEvent(t, events, "client removed", func(ev Event) bool {
		return ev.Type == EventRemoved && ev.Token == clientTok && ev.RemoteID == 5
	})

	// The connection still carries data, and unknown tokens are refused.
	if _, err := conn.Write([]byte("x")); err != nil {
		t.Errorf("write after subflow changes: %v", err)
	}
	if err := c.Announce(0xdeadbeef, Endpoint{ID: 5, Addr: lo3, Flags: FlagSignal}); err == nil {
		t.Error("Announce on an unknown token succeeded")
	}
}
