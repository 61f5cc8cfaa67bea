package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/mcpagent/mcpagent/control"
)

// dhcpEvent is `mcpagent dhcp-event`, which the DHCP clients' hook scripts
// run: it hands the running agent the client's event and the options the
// client put in its environment (udhcpc: optN=HEX, odhcp6c:
// OPTION_N=HEX), and saves them for an agent that starts later. It takes
// at most control.Timeout and never waits for an agent that is not there.
func dhcpEvent(args []string) int {
	fs := flag.NewFlagSet("mcpagent dhcp-event", flag.ContinueOnError)
	load := configFlags(fs)
	family := fs.Int("family", 4, "4 (udhcpc) or 6 (odhcp6c)")
	event := fs.String("event", "", "the DHCP client's `event` (udhcpc: bound, renew, deconfig; odhcp6c: bound, informed, updated, rebound, unbound, stopped)")
	ifname := fs.String("interface", "", "the `device` the DHCP client runs on")
	cfg := parseConfig(fs, load, args)
	if cfg == nil {
		return 2
	}
	ev := control.DHCPEvent{Interface: *ifname, Family: *family, Event: *event, Options: optionsFromEnv(os.Environ(), *family)}
	if err := ev.Check(); err != nil {
		fmt.Fprintln(os.Stderr, "mcpagent dhcp-event:", err)
		return 2
	}
	// Saved first: an agent starting now replays the file after it
	// listens, so no event falls between the two.
	if err := control.SaveDHCP(control.DHCPStateDir(cfg.ControlSocket), ev); err != nil {
		fmt.Fprintln(os.Stderr, "mcpagent dhcp-event:", err)
	}
	if err := control.Send(context.Background(), cfg.ControlSocket, control.Request{DHCP: &ev}); err != nil {
		fmt.Fprintln(os.Stderr, "mcpagent dhcp-event:", err)
		return 1
	}
	return 0
}

// optionsFromEnv returns the options a DHCP client of family put in the
// environment env: optN=HEX for udhcpc (4), OPTION_N=HEX for odhcp6c (6).
// Other variables, and names whose N is not a decimal option code, are
// skipped.
func optionsFromEnv(env []string, family int) map[uint16]string {
	prefix, bits := "opt", 8
	if family == 6 {
		prefix, bits = "OPTION_", 16
	}
	opts := map[uint16]string{}
	for _, kv := range env {
		name, value, ok := strings.Cut(kv, "=")
		digits, found := strings.CutPrefix(name, prefix)
		if !ok || !found || digits == "" || digits[0] == '+' {
			continue
		}
		code, err := strconv.ParseUint(digits, 10, bits)
		if err != nil || code == 0 {
			continue
		}
		opts[uint16(code)] = value
	}
	if len(opts) == 0 {
		return nil
	}
	return opts
}
