package mptcppm

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/genetlink/genltest"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// These tests run without privileges against a fake mptcp_pm family
// (genltest); the integration tests run the same calls against the kernel.

var testFamily = genetlink.Family{
	ID:      0x1d,
	Name:    familyName,
	Version: familyVersion,
	Groups:  []genetlink.MulticastGroup{{ID: 7, Name: "mptcp_pm_cmds"}, {ID: 8, Name: eventsGroup}},
}

// request is what the fake family saw: command, netlink flags, attributes.
type request struct {
	cmd   uint8
	flags netlink.HeaderFlags
	data  []byte
}

var cmpRequest = []cmp.Option{cmp.AllowUnexported(request{}), cmpopts.EquateEmpty()}

// fakeFamily returns a Client whose requests are recorded in *reqs and
// answered by reply: nil messages and nil error acknowledge.
func fakeFamily(t *testing.T, reqs *[]request, reply func(request) ([]genetlink.Message, error)) *Client {
	t.Helper()
	conn := genltest.Dial(genltest.ServeFamily(testFamily, func(greq genetlink.Message, nreq netlink.Message) ([]genetlink.Message, error) {
		if nreq.Header.Type != netlink.HeaderType(testFamily.ID) {
			// genltest asks again with an empty request when a call
			// had no reply; io.EOF means "nothing more".
			return nil, io.EOF
		}
		r := request{greq.Header.Command, nreq.Header.Flags, greq.Data}
		*reqs = append(*reqs, r)
		msgs, err := reply(r)
		if msgs == nil && err == nil {
			return nil, io.EOF
		}
		return msgs, err
	}))
	c, err := newClient(conn)
	if err != nil {
		t.Fatalf("newClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func endpointReply(t *testing.T, e Endpoint) genetlink.Message {
	t.Helper()
	return genetlink.Message{
		Header: genetlink.Header{Command: cmdGetAddr, Version: familyVersion},
		Data:   mustEndpointRequest(t, e),
	}
}

func mustEndpointRequest(t *testing.T, e Endpoint) []byte {
	t.Helper()
	b, err := endpointRequest(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAddEndpointReadsBack(t *testing.T) {
	add := Endpoint{Addr: netip.MustParseAddr("fd00::1"), Flags: FlagSubflow | FlagBackup, IfIndex: 3}
	stored := add
	stored.ID = 5
	other := Endpoint{ID: 1, Addr: netip.MustParseAddr("10.0.0.9"), Flags: FlagSignal}

	for _, tt := range []struct {
		name     string
		add      Endpoint
		want     Endpoint
		wantReqs []request
	}{
		{
			name: "kernel chooses the ID",
			add:  add,
			want: stored,
			wantReqs: []request{
				{cmdAddAddr, netlink.Request | netlink.Acknowledge, mustEndpointRequest(t, add)},
				{cmdGetAddr, netlink.Request | netlink.Dump, nil},
			},
		},
		{
			name: "caller chooses the ID",
			add:  stored,
			want: stored,
			wantReqs: []request{
				{cmdAddAddr, netlink.Request | netlink.Acknowledge, mustEndpointRequest(t, stored)},
				{cmdGetAddr, netlink.Request, mustEndpointRequest(t, Endpoint{ID: 5})},
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var reqs []request
			c := fakeFamily(t, &reqs, func(r request) ([]genetlink.Message, error) {
				switch {
				case r.cmd == cmdAddAddr:
					return nil, nil
				case r.cmd == cmdGetAddr && r.flags&netlink.Dump != 0:
					return []genetlink.Message{endpointReply(t, other), endpointReply(t, stored)}, nil
				case r.cmd == cmdGetAddr:
					return []genetlink.Message{endpointReply(t, stored)}, nil
				}
				return nil, fmt.Errorf("unexpected command %d", r.cmd)
			})
			got, err := c.AddEndpoint(tt.add)
			if err != nil {
				t.Fatalf("AddEndpoint: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
				t.Errorf("AddEndpoint (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantReqs, reqs, cmpRequest...); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRequests(t *testing.T) {
	ack := netlink.Request | netlink.Acknowledge
	limits, err := encodeLimits(Limits{AddAddrAccepted: 2, Subflows: 3})
	if err != nil {
		t.Fatal(err)
	}
	// The userspace requests are spelled out attribute by attribute.
	const tok = 0x01020304
	var (
		token  = netlink.Attribute{Type: pmAttrToken, Data: ne32(tok)}
		fam4   = netlink.Attribute{Type: addrAttrFamily, Data: ne16(linuxAFInet)}
		lo1    = netlink.Attribute{Type: addrAttrAddr4, Data: []byte{127, 0, 0, 1}}
		lo2    = netlink.Attribute{Type: addrAttrAddr4, Data: []byte{127, 0, 0, 2}}
		port80 = netlink.Attribute{Type: addrAttrPort, Data: ne16(80)}
		remote = nest(t, pmAttrAddrRemote, fam4, lo1, port80)
		srv    = netip.MustParseAddrPort("127.0.0.1:80")
	)
	for _, tt := range []struct {
		name string
		call func(*Client) error
		want request
	}{
		{"DeleteEndpoint", func(c *Client) error { return c.DeleteEndpoint(9) },
			request{cmdDelAddr, ack, mustEndpointRequest(t, Endpoint{ID: 9})}},
		{"FlushEndpoints", func(c *Client) error { return c.FlushEndpoints() },
			request{cmdFlushAddrs, ack, nil}},
		{"SetFlags", func(c *Client) error { return c.SetFlags(9, FlagBackup) },
			request{cmdSetFlags, ack, mustEndpointRequest(t, Endpoint{ID: 9, Flags: FlagBackup})}},
		{"SetLimits", func(c *Client) error { return c.SetLimits(Limits{AddAddrAccepted: 2, Subflows: 3}) },
			request{cmdSetLimits, ack, limits}},
		{"Announce", func(c *Client) error {
			return c.Announce(tok, Endpoint{ID: 5, Addr: netip.MustParseAddr("127.0.0.2"), Flags: FlagSignal})
		}, request{cmdAnnounce, ack, attrs(t, token, nest(t, pmAttrAddr, fam4, lo2,
			netlink.Attribute{Type: addrAttrID, Data: []byte{5}},
			netlink.Attribute{Type: addrAttrFlags, Data: ne32(uint32(FlagSignal))},
		))}},
		{"Remove", func(c *Client) error { return c.Remove(tok, 5) },
			request{cmdRemove, ack, attrs(t, token, netlink.Attribute{Type: pmAttrLocID, Data: []byte{5}})}},
		{"CreateSubflow", func(c *Client) error {
			return c.CreateSubflow(tok, Endpoint{ID: 7, Addr: netip.MustParseAddr("127.0.0.2"), Flags: FlagBackup, IfIndex: 1}, srv)
		}, request{cmdSubflowCreate, ack, attrs(t, token, nest(t, pmAttrAddr, fam4, lo2,
			netlink.Attribute{Type: addrAttrID, Data: []byte{7}},
			netlink.Attribute{Type: addrAttrFlags, Data: ne32(uint32(FlagBackup))},
			netlink.Attribute{Type: addrAttrIfIdx, Data: ne32(1)},
		), remote)}},
		{"DestroySubflow", func(c *Client) error {
			return c.DestroySubflow(tok, netip.MustParseAddrPort("127.0.0.2:1000"), srv)
		}, request{cmdSubflowDestroy, ack, attrs(t, token, nest(t, pmAttrAddr, fam4, lo2,
			netlink.Attribute{Type: addrAttrPort, Data: ne16(1000)},
		), remote)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var reqs []request
			c := fakeFamily(t, &reqs, func(request) ([]genetlink.Message, error) { return nil, nil })
			if err := tt.call(c); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]request{tt.want}, reqs, cmpRequest...); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestKernelErrorIsWrapped(t *testing.T) {
	var reqs []request
	c := fakeFamily(t, &reqs, func(request) ([]genetlink.Message, error) {
		return nil, genltest.Error(int(unix.EINVAL))
	})
	err := c.SetLimits(Limits{Subflows: 9})
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("SetLimits = %v, want an error wrapping EINVAL", err)
	}
}

func TestFamilyMissingOrNewer(t *testing.T) {
	newer := testFamily
	newer.Version = familyVersion + 1
	for _, tt := range []struct {
		name string
		fn   genltest.Func
	}{
		{"missing", func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
			return nil, genltest.Error(int(unix.ENOENT))
		}},
		{"newer version", genltest.ServeFamily(newer, func(genetlink.Message, netlink.Message) ([]genetlink.Message, error) {
			return nil, io.EOF
		})},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := newClient(genltest.Dial(tt.fn)); !errors.Is(err, ErrNotSupported) {
				t.Errorf("newClient = %v, want ErrNotSupported", err)
			}
			if _, err := newEventConn(genltest.Dial(tt.fn), nil); !errors.Is(err, ErrNotSupported) {
				t.Errorf("newEventConn = %v, want ErrNotSupported", err)
			}
		})
	}
}
