package mptcppm

import (
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
)

// The requests below drive one connection under the userspace path
// manager (sysctl net.mptcp.pm_type=1, or net.mptcp.path_manager=userspace
// where it exists), naming it by the token its events carry. The kernel
// refuses them for connections under the in-kernel path manager, and
// accepts a peer's new subflows only while someone listens to the events.

// connRequest returns the attributes of a per-connection request: the
// token, local as MPTCP_PM_ATTR_ADDR and, if valid, remote as
// MPTCP_PM_ATTR_ADDR_REMOTE.
func connRequest(token uint32, local Endpoint, remote netip.AddrPort) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(pmAttrToken, token)
	if err := encodeEndpoint(ae, pmAttrAddr, local); err != nil {
		return nil, err
	}
	if remote.IsValid() {
		if err := encodeEndpoint(ae, pmAttrAddrRemote, Endpoint{Addr: remote.Addr(), Port: remote.Port()}); err != nil {
			return nil, fmt.Errorf("remote: %w", err)
		}
	}
	return ae.Encode()
}

// Announce makes the connection with the given token announce local to its
// peer (ADD_ADDR). The kernel requires a non-zero local.ID and FlagSignal.
func (c *Client) Announce(token uint32, local Endpoint) error {
	b, err := connRequest(token, local, netip.AddrPort{})
	if err == nil {
		err = c.ack(cmdAnnounce, b)
	}
	if err != nil {
		return fmt.Errorf("announce %s (id %d) on connection %#x: %w", local.Addr, local.ID, token, err)
	}
	return nil
}

// Remove makes the connection with the given token tell its peer that the
// local address with the given ID is gone (REMOVE_ADDR), and closes the
// subflows that use it.
func (c *Client) Remove(token uint32, id uint8) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(pmAttrToken, token)
	ae.Uint8(pmAttrLocID, id)
	b, err := ae.Encode()
	if err == nil {
		err = c.ack(cmdRemove, b)
	}
	if err != nil {
		return fmt.Errorf("remove address id %d on connection %#x: %w", id, token, err)
	}
	return nil
}

// CreateSubflow opens a subflow of the connection with the given token
// from local to remote. local.ID zero lets the kernel choose; local.Flags
// may hold FlagBackup; local.IfIndex binds the subflow; remote needs a
// port.
func (c *Client) CreateSubflow(token uint32, local Endpoint, remote netip.AddrPort) error {
	b, err := connRequest(token, local, remote)
	if err == nil {
		err = c.ack(cmdSubflowCreate, b)
	}
	if err != nil {
		return fmt.Errorf("create subflow %s -> %s on connection %#x: %w", local.Addr, remote, token, err)
	}
	return nil
}

// DestroySubflow closes the subflow of the connection with the given token
// between local and remote, both with ports, as the subflow's events give
// them.
func (c *Client) DestroySubflow(token uint32, local, remote netip.AddrPort) error {
	b, err := connRequest(token, Endpoint{Addr: local.Addr(), Port: local.Port()}, remote)
	if err == nil {
		err = c.ack(cmdSubflowDestroy, b)
	}
	if err != nil {
		return fmt.Errorf("destroy subflow %s -> %s on connection %#x: %w", local, remote, token, err)
	}
	return nil
}
