package firewall

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// nftTable is the agent's nftables table. It holds both address families
// (inet) and nothing else, so that removing it removes exactly the agent's
// rules, and fw4, which flushes and deletes only table inet fw4, leaves it
// alone.
const nftTable = "inet mcpagent"

// nftReplace starts a script that replaces the agent's table: adding a
// table that exists is a no-op, so the delete always succeeds, and nft
// applies the whole script as one transaction.
const nftReplace = "add table " + nftTable + "\ndelete table " + nftTable + "\n"

// NFTables returns the input for nft -f that replaces, in one transaction,
// the agent's table inet mcpagent, and whatever an earlier run left in it,
// with the rules for r, for IPv4 and IPv6 alike. r must be valid (see
// Validate). The output is deterministic, and loading it twice leaves the
// same table.
func NFTables(r Rules) string { return renderNFT(ruleset(r)) }

// nftLoader loads a script made by renderNFT with nft.
type nftLoader struct {
	run    runner
	script string
}

// check asks nft, and through it the kernel, whether the script would load,
// without changing anything.
func (l *nftLoader) check(ctx context.Context) error {
	if _, err := l.run.run(ctx, l.script, "nft", "--check", "-f", "-"); err != nil {
		return fmt.Errorf("check nftables rules: %w", err)
	}
	return nil
}

func (l *nftLoader) load(ctx context.Context) error {
	if _, err := l.run.run(ctx, l.script, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("load nftables rules: %w", err)
	}
	return nil
}

// unload deletes the agent's table, if it exists.
func (l *nftLoader) unload(ctx context.Context) error {
	if _, err := l.run.run(ctx, nftReplace, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("remove nftables rules: %w", err)
	}
	return nil
}

// nftHook is where a hook's base chain sits: its name in the agent's
// table, the hook and the priority. The priorities are those of iptables'
// mangle and filter tables, where the iptables backend puts the same rules.
func nftHook(h hook) (chain, spec string) {
	switch h {
	case hookPrerouting:
		return "prerouting", "type filter hook prerouting priority mangle; policy accept;"
	case hookForward:
		return "forward", "type filter hook forward priority filter; policy accept;"
	case hookOutput:
		return "output", "type filter hook output priority mangle; policy accept;"
	}
	panic(fmt.Sprintf("firewall: unknown hook %d", h))
}

// renderNFT renders chains: one base chain per hook holding the entries
// into the agent's chains, then the agent's chains, in one table that the
// script first deletes.
func renderNFT(chains []chain) string {
	var b strings.Builder
	b.WriteString("# mcpagent rules (IPv4 and IPv6)\n")
	b.WriteString(nftReplace)
	fmt.Fprintf(&b, "table %s {\n", nftTable)
	if timeout := aliveTimeout(chains); timeout != 0 {
		// The heartbeats' set: one element per address family, which
		// each heartbeat refreshes.
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype nf_proto\n\t\tflags dynamic,timeout\n\t\ttimeout %ds\n\t}\n", nftAliveSet, timeout/time.Second)
	}
	var hooks []hook
	for _, c := range chains {
		if len(c.entry) > 0 && !slices.Contains(hooks, c.hook) {
			hooks = append(hooks, c.hook)
		}
	}
	for _, h := range hooks {
		name, spec := nftHook(h)
		fmt.Fprintf(&b, "\tchain %s {\n\t\t%s\n", name, spec)
		for _, c := range chains {
			if c.hook != h {
				continue
			}
			for _, m := range c.entry {
				writeNFTRule(&b, rule{m, action{kind: actJump, chain: c.name}})
			}
		}
		b.WriteString("\t}\n")
	}
	for _, c := range chains {
		fmt.Fprintf(&b, "\tchain %s {\n", c.name)
		for _, r := range c.rules {
			writeNFTRule(&b, r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// nftAliveSet names the set of the heartbeats.
const nftAliveSet = "alive"

// aliveTimeout returns the timeout of the rules' alive match, or zero.
func aliveTimeout(chains []chain) time.Duration {
	for _, c := range chains {
		for _, r := range c.rules {
			if r.alive != 0 {
				return r.alive
			}
		}
	}
	return 0
}

// writeNFTRule writes r as one nft rule, or three for TPROXY.
func writeNFTRule(b *strings.Builder, r rule) {
	m := nftMatch(r.match)
	for _, stmt := range nftStatements(r.action) {
		b.WriteString("\t\t")
		b.WriteString(strings.Join(append(m[:len(m):len(m)], stmt), " "))
		b.WriteByte('\n')
	}
}

func nftMatch(m match) []string {
	var e []string
	if m.inInterface != "" {
		// ValidInterfaceName refuses quotes, backslashes and blanks.
		e = append(e, `iifname "`+m.inInterface+`"`)
	}
	if m.outInterface != "" {
		e = append(e, `oifname "`+m.outInterface+`"`)
	}
	if m.udpDstPort != 0 {
		e = append(e, fmt.Sprintf("udp dport %d", m.udpDstPort))
	}
	if m.tcp && !m.syn {
		e = append(e, "meta l4proto tcp")
	}
	if m.syn {
		e = append(e, "tcp flags & (fin | syn | rst | ack) == syn")
	}
	if m.dstLocal {
		e = append(e, "fib daddr type local")
	}
	if m.transparentSocket {
		e = append(e, "socket transparent 1")
	}
	if m.mark != nil {
		e = append(e, fmt.Sprintf("meta mark & %s == %s", nftHex(m.mark.mask), nftHex(m.mark.value)))
	}
	if m.alive != 0 {
		e = append(e, "meta nfproto @"+nftAliveSet)
	}
	return e
}

// nftStatements returns the statements that end a rule with action a, one
// per rule the action needs.
func nftStatements(a action) []string {
	switch a.kind {
	case actJump:
		return []string{"jump " + a.chain}
	case actReturn:
		return []string{"return"}
	case actAccept:
		return []string{"accept"}
	case actSetMark:
		return []string{nftSetMark(a.mark)}
	case actQueue:
		// The counter tells an operator how many SYNs went to the agent.
		return []string{fmt.Sprintf("counter queue num %d bypass", a.queue)}
	case actTProxy:
		// An inet table's tproxy needs the family for an address. Unlike
		// iptables' TPROXY it is not terminal: when no transparent socket
		// takes the packet the rule ends there, so a last rule drops the
		// packet, as TPROXY does.
		mark := nftSetMark(a.mark)
		return []string{
			fmt.Sprintf("meta nfproto ipv4 tproxy ip to %s:%d %s accept", tproxyAddr(false), a.port, mark),
			fmt.Sprintf("meta nfproto ipv6 tproxy ip6 to [%s]:%d %s accept", tproxyAddr(true), a.port, mark),
			"drop",
		}
	case actRejectWithReset:
		return []string{"reject with tcp reset"}
	case actBeat:
		return []string{"update @" + nftAliveSet + " { meta nfproto } drop"}
	}
	panic(fmt.Sprintf("firewall: unknown action %d", a.kind))
}

// nftSetMark sets the bits m.mask of the packet mark to m.value and keeps
// the others.
func nftSetMark(m markValue) string {
	return fmt.Sprintf("meta mark set meta mark & %s | %s", nftHex(^m.mask), nftHex(m.value))
}

func nftHex(v uint32) string { return fmt.Sprintf("0x%08x", v) }
