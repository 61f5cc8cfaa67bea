package dhcpopt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/dhcpv6/nclient6"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

const (
	// v4Retransmit is the first DHCPv4 retransmission delay, doubled on
	// each retransmission (RFC 2131 §4.1).
	v4Retransmit = 4 * time.Second
	// v6Retransmit is INF_TIMEOUT, the first Information-Request
	// retransmission delay, doubled on each retransmission (RFC 8415 §7.6,
	// §15). The initial random delay of up to INF_MAX_DELAY is left out:
	// it spreads the requests of many hosts after a link comes up, and
	// InformV6 is called when the agent needs the list.
	v6Retransmit = 1 * time.Second

	dhcpv4ClientPort = 68
	dhcpv6ClientPort = 546
	dhcpv6ServerPort = 547

	// snapLen is the capture length of the packet filters: whole packets.
	snapLen = 1 << 18
)

// uplinkInterface returns the named interface and its addresses; it must
// have a hardware address, as the packet socket that reads replies needs.
func uplinkInterface(name string) (*net.Interface, []net.Addr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, nil, err
	}
	if len(ifi.HardwareAddr) == 0 {
		return nil, nil, fmt.Errorf("interface %s has no hardware address", ifi.Name)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, nil, fmt.Errorf("list addresses of %s: %w", ifi.Name, err)
	}
	return ifi, addrs, nil
}

func informV4(ctx context.Context, cfg InformConfig, accept func(*dhcpv4.DHCPv4) bool) error {
	ifi, ifAddrs, err := uplinkInterface(cfg.Interface)
	if err != nil {
		return err
	}
	ciaddr, ok := pickV4(ifAddrs)
	if !ok {
		return fmt.Errorf("interface %s has no IPv4 address to inform from", ifi.Name)
	}
	raw, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IP, &packet.Config{Filter: udp4Filter})
	if err != nil {
		return fmt.Errorf("open packet socket on %s: %w", ifi.Name, err)
	}
	// One packet socket both ways: it receives copies of every datagram
	// to the DHCP client port on the link, whatever its destination
	// address, and sends from ciaddr. nclient4 closes it.
	conn := clientConn{
		PacketConn: nclient4.NewBroadcastUDPConn(raw, &net.UDPAddr{Port: dhcpv4ClientPort}),
		send:       nclient4.NewBroadcastUDPConn(raw, &net.UDPAddr{IP: ciaddr.AsSlice(), Port: dhcpv4ClientPort}),
	}
	c, err := nclient4.NewWithConn(conn, ifi.HardwareAddr, nclient4.WithTimeout(v4Retransmit), nclient4.WithRetry(-1))
	if err != nil {
		raw.Close()
		return err
	}
	defer c.Close()
	// NewInform leaves out everything that would touch a lease: no
	// requested address, no lease time, no client identifier.
	inform, err := dhcpv4.NewInform(ifi.HardwareAddr, ciaddr.AsSlice(),
		dhcpv4.WithRequestedOptions(dhcpv4.GenericOptionCode(cfg.v4Code())))
	if err != nil {
		return err
	}
	_, err = c.SendAndRead(ctx, c.RemoteAddr(), inform, accept)
	return err
}

// clientConn reads from its PacketConn and sends through send.
type clientConn struct {
	net.PacketConn
	send net.PacketConn
}

func (c clientConn) WriteTo(b []byte, addr net.Addr) (int, error) { return c.send.WriteTo(b, addr) }

// pickV4 returns the first IPv4 address of an interface that can be ciaddr:
// not link-local, as the address of a DHCP lease never is.
func pickV4(addrs []net.Addr) (netip.Addr, bool) {
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ip, ok := netip.AddrFromSlice(n.IP)
			if ip = ip.Unmap(); ok && ip.Is4() && v4Reason(ip) == "" {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

// pickLinkLocal returns the first IPv6 link-local address of an interface.
func pickLinkLocal(addrs []net.Addr) (netip.Addr, bool) {
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ip, ok := netip.AddrFromSlice(n.IP)
			if ok && ip.Is6() && !ip.Is4In6() && ip.IsLinkLocalUnicast() {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

// udp4Filter passes the first fragments of UDP datagrams to the DHCPv4
// client port. A Datagram packet socket's filter sees the IPv4 header at
// offset 0.
var udp4Filter = mustAssemble([]bpf.Instruction{
	bpf.LoadAbsolute{Off: 9, Size: 1}, // protocol
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_UDP, SkipTrue: 6},
	bpf.LoadAbsolute{Off: 6, Size: 2}, // flags, fragment offset
	bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 4},
	bpf.LoadMemShift{Off: 0}, // X = header length
	bpf.LoadIndirect{Off: 2, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: dhcpv4ClientPort, SkipFalse: 1},
	bpf.RetConstant{Val: snapLen},
	bpf.RetConstant{Val: 0},
})

// udp6Filter passes UDP datagrams, with no extension header before UDP, to
// the DHCPv6 client port or to port.
func udp6Filter(port uint16) []bpf.RawInstruction {
	return mustAssemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 6, Size: 1}, // next header
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_UDP, SkipTrue: 4},
		bpf.LoadAbsolute{Off: ipv6HeaderLen + 2, Size: 2}, // destination port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: dhcpv6ClientPort, SkipTrue: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port), SkipFalse: 1},
		bpf.RetConstant{Val: snapLen},
		bpf.RetConstant{Val: 0},
	})
}

// mustAssemble assembles a fixed program; it panics only on a bug in this
// file.
func mustAssemble(prog []bpf.Instruction) []bpf.RawInstruction {
	raw, err := bpf.Assemble(prog)
	if err != nil {
		panic(fmt.Sprintf("dhcpopt: assemble packet filter: %v", err))
	}
	return raw
}

func informV6(ctx context.Context, cfg InformConfig, accept func(*dhcpv6.Message) bool) error {
	ifi, ifAddrs, err := uplinkInterface(cfg.Interface)
	if err != nil {
		return err
	}
	ll, ok := pickLinkLocal(ifAddrs)
	if !ok {
		return fmt.Errorf("interface %s has no IPv6 link-local address", ifi.Name)
	}
	// Send from an ephemeral port: binding the client port would take the
	// system client's unicast replies while the exchange lasts. Servers
	// answer to the client port (RFC 8415 §7.2), which the packet socket
	// sees without taking it.
	//
	// Zones are given by index: the net package caches the name to index
	// map for up to a minute, and an uplink re-created under the same
	// name gets a new index.
	zone := strconv.Itoa(ifi.Index)
	send, err := net.ListenUDP("udp6", &net.UDPAddr{IP: ll.AsSlice(), Zone: zone})
	if err != nil {
		return fmt.Errorf("open udp socket on %s: %w", ifi.Name, err)
	}
	port := uint16(send.LocalAddr().(*net.UDPAddr).Port)
	raw, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IPV6, &packet.Config{Filter: udp6Filter(port)})
	if err != nil {
		send.Close()
		return fmt.Errorf("open packet socket on %s: %w", ifi.Name, err)
	}
	conn := &udp6Conn{raw: raw, send: send, zone: ifi.Name, port: port}
	c, err := nclient6.NewWithConn(conn, ifi.HardwareAddr, nclient6.WithTimeout(v6Retransmit), nclient6.WithRetry(-1))
	if err != nil {
		conn.Close()
		return err
	}
	defer c.Close()
	req, err := dhcpv6.NewMessage()
	if err != nil {
		return err
	}
	req.MessageType = dhcpv6.MessageTypeInformationRequest
	// RFC 8415 §18.2.6: a Client Identifier (DUID-LL: stable, and the
	// same hardware address the system client has), an ORO that asks for
	// INF_MAX_RT besides the MCP list, and an Elapsed Time.
	req.AddOption(dhcpv6.OptClientID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: ifi.HardwareAddr}))
	req.AddOption(dhcpv6.OptRequestedOption(dhcpv6.OptionCode(cfg.v6Code()), dhcpv6.OptionInfMaxRT))
	req.AddOption(dhcpv6.OptElapsedTime(0))
	dst := &net.UDPAddr{IP: net.ParseIP("ff02::1:2"), Port: dhcpv6ServerPort, Zone: zone}
	_, err = c.SendAndRead(ctx, dst, req, accept)
	return err
}

// udp6Conn receives the UDP payloads that its packet socket captures and
// sends through a UDP socket.
type udp6Conn struct {
	raw  *packet.Conn
	send *net.UDPConn
	zone string
	port uint16 // the local port of send
	buf  [1 << 16]byte
}

// ReadFrom returns the next captured datagram to the DHCPv6 client port or
// to c.port. Only nclient6's receive loop calls it.
func (c *udp6Conn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, _, err := c.raw.ReadFrom(c.buf[:])
		if err != nil {
			return 0, nil, err
		}
		src, dport, payload, ok := parseUDP6(c.buf[:n])
		if !ok || (dport != dhcpv6ClientPort && dport != c.port) {
			continue
		}
		return copy(b, payload), net.UDPAddrFromAddrPort(netip.AddrPortFrom(src.Addr().WithZone(c.zone), src.Port())), nil
	}
}

func (c *udp6Conn) WriteTo(b []byte, addr net.Addr) (int, error) { return c.send.WriteTo(b, addr) }

func (c *udp6Conn) Close() error { return errors.Join(c.raw.Close(), c.send.Close()) }

func (c *udp6Conn) LocalAddr() net.Addr { return c.send.LocalAddr() }

func (c *udp6Conn) SetDeadline(t time.Time) error {
	return errors.Join(c.raw.SetDeadline(t), c.send.SetDeadline(t))
}

func (c *udp6Conn) SetReadDeadline(t time.Time) error { return c.raw.SetReadDeadline(t) }

func (c *udp6Conn) SetWriteDeadline(t time.Time) error { return c.send.SetWriteDeadline(t) }

const (
	ipv6HeaderLen = 40
	udpHeaderLen  = 8
)

// parseUDP6 decodes an IPv6 packet that carries a UDP datagram right after
// its fixed header, and returns the datagram's source, destination port and
// payload. It reports false for anything else or anything truncated; it
// does not verify the checksum.
func parseUDP6(pkt []byte) (src netip.AddrPort, dport uint16, payload []byte, ok bool) {
	if len(pkt) < ipv6HeaderLen+udpHeaderLen || pkt[0]>>4 != 6 || pkt[6] != unix.IPPROTO_UDP {
		return netip.AddrPort{}, 0, nil, false
	}
	plen := int(binary.BigEndian.Uint16(pkt[4:6]))
	if plen < udpHeaderLen || ipv6HeaderLen+plen > len(pkt) {
		return netip.AddrPort{}, 0, nil, false
	}
	udp := pkt[ipv6HeaderLen : ipv6HeaderLen+plen]
	ulen := int(binary.BigEndian.Uint16(udp[4:6]))
	if ulen < udpHeaderLen || ulen > len(udp) {
		return netip.AddrPort{}, 0, nil, false
	}
	srcIP := netip.AddrFrom16([16]byte(pkt[8:24]))
	src = netip.AddrPortFrom(srcIP, binary.BigEndian.Uint16(udp[0:2]))
	return src, binary.BigEndian.Uint16(udp[2:4]), udp[udpHeaderLen:ulen], true
}
