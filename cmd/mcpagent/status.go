package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/mcpagent/mcpagent/control"
)

// statusCmd is `mcpagent status`: it asks the running agent for its
// uplinks and relayed connections and prints them, as a table or, with
// -json, as the agent's control.Status.
func statusCmd(args []string) int {
	fs := flag.NewFlagSet("mcpagent status", flag.ContinueOnError)
	load := configFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON for programs")
	cfg := parseConfig(fs, load, args)
	if cfg == nil {
		return 2
	}
	st, err := control.QueryStatus(context.Background(), cfg.ControlSocket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcpagent status:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return 1
		}
		return 0
	}
	printStatus(os.Stdout, st)
	return 0
}

// printStatus writes st for people: a table of uplinks, the counters, then
// each connection with its subflows.
func printStatus(w io.Writer, st control.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UPLINK\tINTERFACE\tROLE\tPRIORITY\tSTATE\tHEALTH\tUSE\tSUBFLOWS\tRX\tTX\tADDRESSES")
	for _, u := range st.Uplinks {
		health := "healthy"
		if !u.Healthy {
			health = "failing"
		}
		name := u.Name
		if u.Community != "" {
			name += " (" + u.Community + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", name, u.Interface, u.Role, u.Priority,
			u.State, health, u.Use, u.Subflows, u.RxBytes, u.TxBytes, strings.Join(u.Addrs, " "))
	}
	tw.Flush()
	names := make([]string, 0, len(st.Counters))
	for k := range st.Counters {
		names = append(names, k)
	}
	sort.Strings(names)
	fmt.Fprintf(w, "\n%d relayed connections;", len(st.Connections))
	for _, k := range names {
		fmt.Fprintf(w, " %s %d", k, st.Counters[k])
	}
	fmt.Fprintln(w)
	for _, c := range st.Connections {
		kind := "mptcp"
		if !c.MPTCP {
			kind = "tcp (MPTCP refused on the way)"
		}
		fmt.Fprintf(w, "%s -> %s via %s, %s\n", c.Client, c.Destination, c.MCP, kind)
		for _, s := range c.Subflows {
			uplink := s.Uplink
			if uplink == "" {
				uplink = "?"
			}
			var notes string
			if s.Backup {
				notes += " backup"
			}
			if s.State != "established" {
				notes += " " + s.State
			}
			fmt.Fprintf(w, "    %s %s -> %s%s\n", uplink, s.Local, s.Remote, notes)
		}
	}
}
