// Package dhcpopt learns the downstream MCP addresses that the ISP
// provisions over DHCP: it decodes the MCP-list options of DHCPv4 and
// DHCPv6, and, for systems without OpenWrt's netifd, asks for them with a
// DHCPINFORM or an Information-Request that leaves the system's own lease
// alone.
//
// The options follow draft-boucadair-mptcp-dhc (cited by §5.2 and §6.2.2 of
// the plain-mode draft): a DHCPv4 option carrying a list of IPv4 addresses
// and a DHCPv6 option carrying a list of IPv6 addresses. IANA never assigned
// codes for them, so the codes are configurable (DefaultV4Code,
// DefaultV6Code). The options carry addresses only; the MCP port is
// configured separately.
//
// On OpenWrt, netifd's DHCP clients fetch the options: udhcpc, started with
// "-O 224", hands an option it does not know to its hook script as the
// environment variable opt224=<hex>; odhcp6c, started with "-r 65001", as
// OPTION_65001=<hex>. FromHex and ParseV4 or ParseV6 turn such a value into
// addresses. Elsewhere InformV4 and InformV6 ask the ISP's servers directly.
//
// Every decoder is strict: an option with any unusable address (multicast,
// loopback, link-local, ...) is rejected as a whole with an *Error naming
// the reason, and the caller keeps the list it had.
//
// The package never changes interface addresses or routes, and never
// requests, renews or releases a lease. InformV4 and InformV6 need
// CAP_NET_RAW: they capture the replies with a packet socket (filtered to
// the DHCP client ports), so that they neither bind the DHCP client ports
// nor take a reply away from the system's own DHCP client. They are
// supported on Linux only.
package dhcpopt
