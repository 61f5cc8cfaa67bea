package mptcppm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// Client sends requests to the kernel's MPTCP path manager through the
// mptcp_pm generic netlink family. It acts on the network namespace it was
// dialed in.
//
// A Client is safe for concurrent use. After Close, its methods return
// errors wrapping net.ErrClosed.
type Client struct {
	c        *genetlink.Conn
	familyID uint16

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// Dial opens a Client in the calling thread's network namespace. The
// error wraps ErrNotSupported when the kernel has no MPTCP path manager.
//
// Limits and Endpoints need no privilege; every other request needs
// CAP_NET_ADMIN in the namespace's user namespace.
func Dial() (*Client, error) {
	c, err := dial()
	if err != nil {
		return nil, err
	}
	return newClient(c)
}

// newClient looks up the mptcp_pm family on c and takes ownership of c,
// closing it on error. Tests pass a genltest connection.
func newClient(c *genetlink.Conn) (*Client, error) {
	f, err := lookupFamily(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &Client{c: c, familyID: f.ID}, nil
}

// lookupFamily resolves the mptcp_pm family and checks its version.
func lookupFamily(c *genetlink.Conn) (genetlink.Family, error) {
	f, err := c.GetFamily(familyName)
	if errors.Is(err, os.ErrNotExist) {
		return genetlink.Family{}, fmt.Errorf("kernel has no generic netlink family %q (MPTCP needs Linux 5.7+ built with CONFIG_MPTCP): %w",
			familyName, ErrNotSupported)
	}
	if err != nil {
		return genetlink.Family{}, fmt.Errorf("look up generic netlink family %q: %w", familyName, err)
	}
	if f.Version != familyVersion {
		return genetlink.Family{}, fmt.Errorf("generic netlink family %q has version %d, this package speaks %d: %w",
			familyName, f.Version, familyVersion, ErrNotSupported)
	}
	return f, nil
}

// Close closes the netlink socket. It is safe to call more than once;
// later calls return what the first returned.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.closeErr = c.c.Close()
	})
	return c.closeErr
}

// execute sends one request with command cmd and attributes attrs and
// returns the replies: the messages of a dump when flags has netlink.Dump,
// else the reply or acknowledgement.
func (c *Client) execute(cmd uint8, flags netlink.HeaderFlags, attrs []byte) ([]genetlink.Message, error) {
	if c.closed.Load() {
		return nil, net.ErrClosed
	}
	req := genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: familyVersion},
		Data:   attrs,
	}
	return c.c.Execute(req, c.familyID, netlink.Request|flags)
}

// ack sends a request that has no reply and waits for the kernel's
// acknowledgement.
func (c *Client) ack(cmd uint8, attrs []byte) error {
	_, err := c.execute(cmd, netlink.Acknowledge, attrs)
	return err
}

// endpointRequest returns the attributes of a request that carries e as
// MPTCP_PM_ATTR_ADDR (the same number as MPTCP_PM_ENDPOINT_ADDR).
func endpointRequest(e Endpoint) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if err := encodeEndpoint(ae, pmAttrAddr, e); err != nil {
		return nil, err
	}
	return ae.Encode()
}

// AddEndpoint adds e to the in-kernel path manager and returns it as the
// kernel stored it: with the ID the kernel chose when e.ID is zero, and
// without flag bits the kernel does not know. The kernel refuses a second
// endpoint with the same address (and port), and more than 8 endpoints.
func (c *Client) AddEndpoint(e Endpoint) (Endpoint, error) {
	b, err := endpointRequest(e)
	if err != nil {
		return Endpoint{}, fmt.Errorf("add endpoint %s: %w", e.Addr, err)
	}
	if err := c.ack(cmdAddAddr, b); err != nil {
		return Endpoint{}, fmt.Errorf("add endpoint %s (%s): %w", e.Addr, e.Flags, err)
	}
	// The kernel acknowledges ADD_ADDR without saying which ID it chose,
	// so read the endpoint back.
	if e.ID != 0 {
		got, err := c.Endpoint(e.ID)
		if err != nil {
			return Endpoint{}, fmt.Errorf("read back endpoint %s: %w", e.Addr, err)
		}
		return got, nil
	}
	eps, err := c.Endpoints()
	if err != nil {
		return Endpoint{}, fmt.Errorf("read back endpoint %s: %w", e.Addr, err)
	}
	for _, got := range eps {
		if got.Addr == e.Addr && got.Port == e.Port {
			return got, nil
		}
	}
	return Endpoint{}, fmt.Errorf("read back endpoint %s: not in the kernel's list after adding it", e.Addr)
}

// DeleteEndpoint removes the endpoint with the given ID. The kernel closes
// the subflows that use it and, for a FlagSignal endpoint, tells peers the
// address is gone (REMOVE_ADDR).
//
// ID 0 is refused: the kernel reads it as "the address of each
// connection's initial subflow", which needs an address, and acknowledges
// a request without one while doing nothing.
func (c *Client) DeleteEndpoint(id uint8) error {
	if id == 0 {
		return errors.New("delete endpoint 0: endpoint IDs start at 1")
	}
	b, err := endpointRequest(Endpoint{ID: id})
	if err != nil {
		return fmt.Errorf("delete endpoint %d: %w", id, err)
	}
	if err := c.ack(cmdDelAddr, b); err != nil {
		return fmt.Errorf("delete endpoint %d: %w", id, err)
	}
	return nil
}

// Endpoint returns the endpoint with the given ID.
func (c *Client) Endpoint(id uint8) (Endpoint, error) {
	b, err := endpointRequest(Endpoint{ID: id})
	if err != nil {
		return Endpoint{}, fmt.Errorf("get endpoint %d: %w", id, err)
	}
	msgs, err := c.execute(cmdGetAddr, 0, b)
	if err != nil {
		return Endpoint{}, fmt.Errorf("get endpoint %d: %w", id, err)
	}
	if len(msgs) != 1 {
		return Endpoint{}, fmt.Errorf("get endpoint %d: %d replies, want 1", id, len(msgs))
	}
	e, err := parseEndpointMsg(msgs[0].Data)
	if err != nil {
		return Endpoint{}, fmt.Errorf("get endpoint %d: %w", id, err)
	}
	return e, nil
}

// Endpoints returns every endpoint of the in-kernel path manager, in the
// kernel's order.
func (c *Client) Endpoints() ([]Endpoint, error) {
	msgs, err := c.execute(cmdGetAddr, netlink.Dump, nil)
	if err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	eps := make([]Endpoint, 0, len(msgs))
	for _, m := range msgs {
		e, err := parseEndpointMsg(m.Data)
		if err != nil {
			return nil, fmt.Errorf("list endpoints: %w", err)
		}
		eps = append(eps, e)
	}
	return eps, nil
}

// FlushEndpoints removes every endpoint, as DeleteEndpoint does for each.
func (c *Client) FlushEndpoints() error {
	if err := c.ack(cmdFlushAddrs, nil); err != nil {
		return fmt.Errorf("flush endpoints: %w", err)
	}
	return nil
}

// SetFlags changes the flags of the endpoint with the given ID. The kernel
// only changes FlagBackup and FlagFullmesh, setting each as f has it, and
// ignores the other bits of f; it tells peers of subflows on the endpoint
// about a backup change (MP_PRIO).
func (c *Client) SetFlags(id uint8, f Flags) error {
	b, err := endpointRequest(Endpoint{ID: id, Flags: f})
	if err != nil {
		return fmt.Errorf("set flags of endpoint %d to %s: %w", id, f, err)
	}
	if err := c.ack(cmdSetFlags, b); err != nil {
		return fmt.Errorf("set flags of endpoint %d to %s: %w", id, f, err)
	}
	return nil
}

// Limits returns the path manager's limits.
func (c *Client) Limits() (Limits, error) {
	msgs, err := c.execute(cmdGetLimits, 0, nil)
	if err != nil {
		return Limits{}, fmt.Errorf("get limits: %w", err)
	}
	if len(msgs) != 1 {
		return Limits{}, fmt.Errorf("get limits: %d replies, want 1", len(msgs))
	}
	l, err := parseLimits(msgs[0].Data)
	if err != nil {
		return Limits{}, fmt.Errorf("get limits: %w", err)
	}
	return l, nil
}

// SetLimits sets the path manager's limits.
func (c *Client) SetLimits(l Limits) error {
	b, err := encodeLimits(l)
	if err != nil {
		return fmt.Errorf("set limits %+v: %w", l, err)
	}
	if err := c.ack(cmdSetLimits, b); err != nil {
		return fmt.Errorf("set limits %+v: %w", l, err)
	}
	return nil
}
