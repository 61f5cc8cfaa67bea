package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"
)

// family names the iptables programs of one address family.
type family struct {
	name, iptables, restore string
	v6                      bool
}

func familyOf(v6 bool) family {
	if v6 {
		return family{"IPv6", "ip6tables", "ip6tables-restore", true}
	}
	return family{"IPv4", "iptables", "iptables-restore", false}
}

// iptablesLoader loads chains with iptables-restore, one transaction per
// address family.
type iptablesLoader struct {
	run    runner
	log    *slog.Logger
	chains []chain
}

// load installs both families, IPv4 first; if IPv6 fails, it removes the
// IPv4 rules again.
func (l *iptablesLoader) load(ctx context.Context) error {
	for i, v6 := range []bool{false, true} {
		if err := l.installFamily(ctx, familyOf(v6)); err != nil {
			if i > 0 {
				// Do not leave IPv4 intercepted while IPv6 is not.
				if rerr := l.removeFamily(ctx, familyOf(false)); rerr != nil {
					err = errors.Join(err, rerr)
				}
			}
			return err
		}
	}
	return nil
}

// unload removes the agent's chains and the jumps into them, for both
// address families.
func (l *iptablesLoader) unload(ctx context.Context) error {
	var errs []error
	for _, v6 := range []bool{false, true} {
		errs = append(errs, l.removeFamily(ctx, familyOf(v6)))
	}
	return errors.Join(errs...)
}

// installFamily replaces, in one iptables-restore transaction, whatever a
// previous run left with the rules of l. Declaring a chain that exists
// flushes it, so only the jumps into the agent's chains need deleting.
func (l *iptablesLoader) installFamily(ctx context.Context, fam family) error {
	sections := installSections(l.chains, fam)
	stale := 0
	for i, s := range sections {
		listing, err := l.run.run(ctx, "", fam.iptables, "-w", "-t", s.table, "-S")
		if err != nil {
			return fmt.Errorf("list %s %s table: %w", fam.name, s.table, err)
		}
		jumps, _, err := findOurs(listing, chainsIn(l.chains, s.table))
		if err != nil {
			return fmt.Errorf("parse %s %s table: %w", fam.name, s.table, err)
		}
		stale += len(jumps)
		sections[i].lines = append(jumps, s.lines...)
	}
	if stale > 0 {
		l.log.Info("replacing rules left by a previous run", "family", fam.name, "jumps", stale)
	}
	if _, err := l.run.run(ctx, renderScript(fam, sections), fam.restore, "-w", "--noflush"); err != nil {
		return fmt.Errorf("load %s rules: %w", fam.name, err)
	}
	return nil
}

// removeFamily deletes the jumps into the agent's chains and the chains, as
// iptables lists them now, in one transaction.
func (l *iptablesLoader) removeFamily(ctx context.Context, fam family) error {
	var sections []section
	for _, table := range tablesOf(l.chains) {
		listing, err := l.run.run(ctx, "", fam.iptables, "-w", "-t", table, "-S")
		if err != nil {
			return fmt.Errorf("list %s %s table: %w", fam.name, table, err)
		}
		jumps, chains, err := findOurs(listing, chainsIn(l.chains, table))
		if err != nil {
			return fmt.Errorf("parse %s %s table: %w", fam.name, table, err)
		}
		lines := jumps
		for _, c := range chains {
			lines = append(lines, "-F "+c)
		}
		for _, c := range chains {
			lines = append(lines, "-X "+c)
		}
		if len(lines) > 0 {
			sections = append(sections, section{table, lines})
		}
	}
	if len(sections) == 0 {
		return nil
	}
	if _, err := l.run.run(ctx, renderScript(fam, sections), fam.restore, "-w", "--noflush"); err != nil {
		return fmt.Errorf("remove %s rules: %w", fam.name, err)
	}
	return nil
}

// IPTablesRestore returns the input for iptables-restore --noflush (v6
// false) or ip6tables-restore --noflush (v6 true) that declares the agent's
// chains, fills them and inserts the jumps into them at the top of the
// built-in chains. r must be valid (see Validate). The output is
// deterministic.
//
// Loading it twice duplicates the jumps; Install removes old jumps first.
func IPTablesRestore(r Rules, v6 bool) string {
	return renderScript(familyOf(v6), installSections(ruleset(r), familyOf(v6)))
}

// section is one table's part of an iptables-restore script.
type section struct {
	table string
	lines []string
}

func renderScript(fam family, sections []section) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# mcpagent %s rules\n", fam.name)
	for _, s := range sections {
		fmt.Fprintf(&b, "*%s\n", s.table)
		for _, l := range s.lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// iptables places each hook's chains in a table and enters them from a
// built-in chain.
func tableOf(h hook) (table, builtin string) {
	switch h {
	case hookPrerouting:
		return "mangle", "PREROUTING"
	case hookForward:
		return "filter", "FORWARD"
	case hookOutput:
		return "mangle", "OUTPUT"
	}
	panic(fmt.Sprintf("firewall: unknown hook %d", h))
}

// tablesOf returns the tables of chains in order of first use.
func tablesOf(chains []chain) []string {
	var tables []string
	for _, c := range chains {
		t, _ := tableOf(c.hook)
		if !slices.Contains(tables, t) {
			tables = append(tables, t)
		}
	}
	return tables
}

// chainsIn returns the names of the chains in table.
func chainsIn(chains []chain, table string) map[string]bool {
	names := map[string]bool{}
	for _, c := range chains {
		if t, _ := tableOf(c.hook); t == table {
			names[c.name] = true
		}
	}
	return names
}

// installSections renders chains: per table, the chain declarations, their
// rules, then the jumps from the built-in chains, inserted at the top in
// order so that the agent sees packets before other rules can accept them.
func installSections(chains []chain, fam family) []section {
	var sections []section
	for _, table := range tablesOf(chains) {
		var decls, rules, jumps []string
		inserted := map[string]int{} // jumps so far into each built-in chain
		for _, c := range chains {
			t, builtin := tableOf(c.hook)
			if t != table {
				continue
			}
			decls = append(decls, ":"+c.name+" - [0:0]")
			for _, r := range c.rules {
				rules = append(rules, ruleLine("-A "+c.name, r, fam))
			}
			for _, m := range c.entry {
				inserted[builtin]++
				pos := "-I " + builtin + " " + strconv.Itoa(inserted[builtin])
				jumps = append(jumps, ruleLine(pos, rule{m, action{kind: actJump, chain: c.name}}, fam))
			}
		}
		lines := append(append(decls, rules...), jumps...)
		sections = append(sections, section{table, lines})
	}
	return sections
}

func ruleLine(prefix string, r rule, fam family) string {
	args := append(matchArgs(r.match, fam), actionArgs(r.action, fam)...)
	return prefix + " " + strings.Join(args, " ")
}

func matchArgs(m match, fam family) []string {
	var a []string
	if m.inInterface != "" {
		a = append(a, "-i", m.inInterface)
	}
	if m.outInterface != "" {
		a = append(a, "-o", m.outInterface)
	}
	if m.tcp || m.syn {
		a = append(a, "-p", "tcp")
	}
	if m.syn {
		a = append(a, "--syn")
	}
	if m.udpDstPort != 0 {
		a = append(a, "-p", "udp", "--dport", strconv.Itoa(int(m.udpDstPort)))
	}
	if m.dstLocal {
		a = append(a, "-m", "addrtype", "--dst-type", "LOCAL")
	}
	if m.transparentSocket {
		a = append(a, "-m", "socket", "--transparent")
	}
	if m.mark != nil {
		a = append(a, "-m", "mark", "--mark", markArg(*m.mark))
	}
	if m.alive != 0 {
		a = append(append(a, aliveList(fam)...), "--rcheck", "--seconds", strconv.Itoa(int(m.alive/time.Second)))
	}
	return a
}

// recentList names the recent list of the heartbeats,
// /proc/net/xt_recent/mcpagent; the kernel holds one per network namespace.
const recentList = "mcpagent"

// aliveList selects the recent list of the heartbeats, keyed by the packet's
// source address masked to nothing: one entry per family, which a
// heartbeat refreshes and any SYN of the family finds. The kernel keeps the
// mask of the rule that created the list for all rules naming it; both
// families' masks are all zeros, so the order does not matter.
func aliveList(fam family) []string {
	mask := "0.0.0.0"
	if fam.v6 {
		mask = "::"
	}
	return []string{"-m", "recent", "--name", recentList, "--rsource", "--mask", mask}
}

func actionArgs(a action, fam family) []string {
	switch a.kind {
	case actJump:
		return []string{"-j", a.chain}
	case actReturn:
		return []string{"-j", "RETURN"}
	case actAccept:
		return []string{"-j", "ACCEPT"}
	case actSetMark:
		return []string{"-j", "MARK", "--set-xmark", markArg(a.mark)}
	case actQueue:
		return []string{"-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(a.queue)), "--queue-bypass"}
	case actTProxy:
		return []string{"-j", "TPROXY", "--on-ip", tproxyAddr(fam.v6).String(), "--on-port", strconv.Itoa(int(a.port)), "--tproxy-mark", markArg(a.mark)}
	case actRejectWithReset:
		return []string{"-j", "REJECT", "--reject-with", "tcp-reset"}
	case actBeat:
		return append(aliveList(fam), "--set", "-j", "DROP")
	}
	panic(fmt.Sprintf("firewall: unknown action %d", a.kind))
}

// markArg formats a mark the way iptables-save prints it.
func markArg(m markValue) string { return fmt.Sprintf("%#x/%#x", m.value, m.mask) }

// maxListing bounds the iptables -S output findOurs accepts.
const maxListing = 16 << 20

// findOurs reads the output of iptables -S for one table and returns the
// commands that delete every rule of another chain jumping to (or going to)
// one of ours, and the names of ours that exist, in listing order.
func findOurs(listing string, ours map[string]bool) (deletions, chains []string, err error) {
	if len(listing) > maxListing {
		return nil, nil, fmt.Errorf("listing of %d bytes is too long", len(listing))
	}
	for n, line := range strings.Split(listing, "\n") {
		args, err := splitArgs(line)
		if err != nil {
			return nil, nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		if len(args) < 2 {
			continue
		}
		switch args[0] {
		case "-N":
			if ours[args[1]] {
				chains = append(chains, args[1])
			}
		case "-A":
			if !ours[args[1]] && ours[target(args)] {
				// Keep iptables' own quoting of the rule, which it
				// prints after a bare "-A".
				rule, ok := strings.CutPrefix(strings.TrimSpace(line), "-A ")
				if !ok {
					return nil, nil, fmt.Errorf("line %d: a rule that does not start with \"-A \": %q", n+1, line)
				}
				deletions = append(deletions, "-D "+rule)
			}
		}
	}
	return deletions, chains, nil
}

// target returns the chain a rule jumps or goes to, or "".
func target(args []string) string {
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-j", "--jump", "-g", "--goto":
			return args[i+1]
		}
	}
	return ""
}

// splitArgs splits one line of iptables -S output into arguments the way
// iptables-restore does: on blanks, with double quotes grouping and
// backslash escaping a quote or backslash inside them.
func splitArgs(line string) ([]string, error) {
	var (
		args    []string
		cur     strings.Builder
		inArg   bool
		inQuote bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(line) && (line[i+1] == '"' || line[i+1] == '\\'):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			inArg = true
		case !inQuote && (c == ' ' || c == '\t' || c == '\r'):
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inQuote {
		return nil, errors.New("unterminated quote")
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}
