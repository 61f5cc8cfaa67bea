package dhcpopt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"
)

// DefaultTimeout bounds InformV4 and InformV6 when InformConfig.Timeout is
// zero.
const DefaultTimeout = 10 * time.Second

// ErrNoReply reports that no DHCP server answered before the timeout.
var ErrNoReply = errors.New("no reply from any dhcp server")

// InformConfig configures InformV4 and InformV6.
type InformConfig struct {
	// Interface is the uplink to ask on, for example "wan". Required.
	Interface string
	// V4Code is the DHCPv4 option code of the MCP list; zero means
	// DefaultV4Code.
	V4Code uint8
	// V6Code is the DHCPv6 option code of the MCP list; zero means
	// DefaultV6Code.
	V6Code uint16
	// Timeout bounds one call, retransmissions included; zero means
	// DefaultTimeout. A call that got only rejected or option-less replies
	// waits this long for a server with a valid list before it reports
	// them.
	Timeout time.Duration
	// Logger receives, at debug level, each reply that was passed over and
	// why. Nil discards.
	Logger *slog.Logger
}

func (c InformConfig) v4Code() uint8 {
	if c.V4Code == 0 {
		return DefaultV4Code
	}
	return c.V4Code
}

func (c InformConfig) v6Code() uint16 {
	if c.V6Code == 0 {
		return DefaultV6Code
	}
	return c.V6Code
}

func (c InformConfig) timeout() time.Duration {
	if c.Timeout <= 0 {
		return DefaultTimeout
	}
	return c.Timeout
}

func (c InformConfig) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c.Logger
}

// InformV4 asks the DHCPv4 servers on cfg.Interface for the MCP list with a
// DHCPINFORM (RFC 2131 §3.4): broadcast, from the interface's IPv4 address
// (the one the system's DHCP client holds) as ciaddr, with cfg.V4Code in
// the parameter request list. It returns the list from the first DHCPACK
// that carries a valid one, passing over DHCPACKs without the option or
// with a rejected one. When the timeout (or ctx's deadline) passes without a
// valid list, the error wraps the last rejection (an *Error), else ErrAbsent
// if a server answered without the option, else ErrNoReply. When ctx is
// cancelled, the error wraps context.Canceled.
//
// It requests, renews and releases no lease, and binds no port: the system
// DHCP client's lease and traffic are left alone. The interface must carry
// an IPv4 address and a hardware address. Safe for concurrent use.
func InformV4(ctx context.Context, cfg InformConfig) ([]netip.Addr, error) {
	if cfg.Interface == "" {
		return nil, errors.New("dhcpv4 inform: no interface configured")
	}
	if err := checkV4Code(cfg.v4Code()); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout())
	defer cancel()
	r := &replies{log: cfg.logger().With("interface", cfg.Interface, "code", cfg.v4Code())}
	err := informV4(ctx, cfg, r.acceptV4(cfg.v4Code()))
	if err := r.result(err); err != nil {
		return nil, fmt.Errorf("dhcpv4 inform on %s: %w", cfg.Interface, err)
	}
	return r.addrs, nil
}

// InformV6 asks the DHCPv6 servers on cfg.Interface for the MCP list with
// an Information-Request (RFC 8415 §18.2.6) sent from the interface's
// link-local address to All_DHCP_Relay_Agents_and_Servers (ff02::1:2),
// naming cfg.V6Code in its Option Request option. It returns the list from
// the first Reply that carries a valid one, and otherwise fails as InformV4
// does.
//
// An Information-Request involves no binding; InformV6 binds no DHCPv6
// client port, so the system client's replies stay its own. The interface
// must have a usable (not tentative) link-local address. Safe for
// concurrent use.
func InformV6(ctx context.Context, cfg InformConfig) ([]netip.Addr, error) {
	if cfg.Interface == "" {
		return nil, errors.New("dhcpv6 inform: no interface configured")
	}
	if err := checkV6Code(cfg.v6Code()); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout())
	defer cancel()
	r := &replies{log: cfg.logger().With("interface", cfg.Interface, "code", cfg.v6Code())}
	err := informV6(ctx, cfg, r.acceptV6(cfg.v6Code()))
	if err := r.result(err); err != nil {
		return nil, fmt.Errorf("dhcpv6 inform on %s: %w", cfg.Interface, err)
	}
	return r.addrs, nil
}

// replies judges the replies to one inform exchange and remembers what the
// ones passed over said. It is used by one goroutine.
type replies struct {
	log      *slog.Logger
	addrs    []netip.Addr // the accepted list
	rejected error        // the last rejected option
	absent   bool         // a reply came without the option
}

// acceptV4 returns a function that reports whether a DHCPv4 reply ends the
// exchange: a DHCPACK with a valid MCP list, which it keeps.
func (r *replies) acceptV4(code uint8) func(*dhcpv4.DHCPv4) bool {
	return func(m *dhcpv4.DHCPv4) bool {
		if m.MessageType() != dhcpv4.MessageTypeAck {
			return false
		}
		addrs, err := FromDHCPv4(m, code)
		return r.judge(addrs, err, m.ServerIdentifier())
	}
}

// acceptV6 returns a function that reports whether a DHCPv6 reply ends the
// exchange: a Reply with a valid MCP list, which it keeps.
func (r *replies) acceptV6(code uint16) func(*dhcpv6.Message) bool {
	return func(m *dhcpv6.Message) bool {
		if m.MessageType != dhcpv6.MessageTypeReply {
			return false
		}
		addrs, err := FromDHCPv6(m, code)
		return r.judge(addrs, err, m.Options.ServerID())
	}
}

// judge keeps addrs and reports true, or notes why err passed the reply
// of server over.
func (r *replies) judge(addrs []netip.Addr, err error, server any) bool {
	switch {
	case err == nil:
		r.addrs = addrs
		return true
	case errors.Is(err, ErrAbsent):
		r.absent = true
		r.log.Debug("dhcp reply without mcp list", "server", server)
	default:
		r.rejected = err
		r.log.Debug("dhcp reply with rejected mcp list", "server", server, "err", err)
	}
	return false
}

// result turns the error that ended an exchange into InformV4's and
// InformV6's: nil once a list was accepted (the exchange ends without error
// only then), cancellation as such, and for a timeout what the replies said.
func (r *replies) result(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled):
		return err
	case !errors.Is(err, context.DeadlineExceeded):
		return err
	case r.rejected != nil:
		return r.rejected
	case r.absent:
		return ErrAbsent
	}
	return ErrNoReply
}
