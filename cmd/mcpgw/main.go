// Command mcpgw is the downstream Multipath Conversion Point: it accepts
// Multipath TCP legs from mcpagent routers, reads the MP_CONVERT header
// that names each leg's destination, connects to it and relays.
//
// Usage:
//
//	mcpgw [-listen ADDR:PORT]... [-deny CIDR]... [-allow-local CIDR]...
//	      [-max-conns-per-client N] [-max-subflows N] [-idle-timeout D]
//	      [-mode off-path|on-path] [-queue N] [-mark-mask M]
//	      [-convert-mark M] [-reject-mark M] [-tproxy-mark M] [-table N]
//	      [-rule-pref N] [-in NAME]... [-max-ports N] [-port-idle D]
//	      [-preserve-source CIDR]... [-log-level debug|info] [-version]
//
// With -mode on-path it runs on a router on the path to the servers and
// terminates the MPTCP connections whose SYN carries an empty MP_CONVERT,
// forwarding everything else; it listens on -listen addresses only if some
// are given. -preserve-source lets a leg's source MP_CONVERT option within
// CIDR be the source of the connection to the server.
//
// It runs until SIGINT or SIGTERM and then exits with status 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mcpagent/mcpagent/internal/cpuprofile"
	"github.com/mcpagent/mcpagent/mcpgw"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mcpgw:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mcpgw", flag.ExitOnError)
	var (
		listen     listFlag[netip.AddrPort]
		deny       listFlag[netip.Prefix]
		allowLocal listFlag[netip.Prefix]
	)
	listen.parse, deny.parse, allowLocal.parse = netip.ParseAddrPort, netip.ParsePrefix, netip.ParsePrefix
	fs.Var(&listen, "listen", "`ADDR:PORT` to accept legs on; repeatable (default 0.0.0.0:5124 and [::]:5124)")
	fs.Var(&deny, "deny", "destination `CIDR` never connected to; repeatable")
	fs.Var(&allowLocal, "allow-local", "`CIDR` of this host's own addresses that clients may reach; repeatable")
	mode := fs.String("mode", "off-path", "off-path (legs addressed to -listen) or on-path (legs intercepted on a router)")
	var preserve listFlag[netip.Prefix]
	preserve.parse = netip.ParsePrefix
	fs.Var(&preserve, "preserve-source", "`CIDR` of source addresses a leg's source option may ask for; repeatable (default: none)")
	queue := fs.Uint("queue", mcpgw.DefaultOnPathQueue, "on-path: NFQUEUE number for MPTCP SYNs")
	markMask := fs.Uint("mark-mask", mcpgw.DefaultOnPathMarkMask, "on-path: packet mark bits the MCP owns")
	convertMark := fs.Uint("convert-mark", mcpgw.DefaultOnPathConvertMark, "on-path: mark of SYNs to terminate")
	rejectMark := fs.Uint("reject-mark", mcpgw.DefaultOnPathRejectMark, "on-path: mark of SYNs to reset")
	tproxyMark := fs.Uint("tproxy-mark", mcpgw.DefaultOnPathTProxyMark, "on-path: mark of packets delivered locally")
	table := fs.Int("table", mcpgw.DefaultOnPathTable, "on-path: routing table for local delivery")
	rulePref := fs.Int("rule-pref", mcpgw.DefaultOnPathRulePref, "on-path: priority of the routing rule")
	var inInterfaces []string
	fs.Func("in", "on-path: take over SYNs forwarded from interface `NAME` only, the customers' side; repeatable (default: from every interface)", func(name string) error {
		inInterfaces = append(inInterfaces, name)
		return nil
	})
	maxPorts := fs.Int("max-ports", mcpgw.DefaultOnPathMaxPorts, "on-path: destination ports with a listener at once")
	portIdle := fs.Duration("port-idle", mcpgw.DefaultOnPathPortIdle, "on-path: a port's listener may close for another port after this long without SYNs")
	maxConns := fs.Int("max-conns-per-client", mcpgw.DefaultMaxConnsPerClient, "legs open at once per client (IPv4 address or IPv6 /64)")
	maxTotal := fs.Int("max-conns", 0, "legs open at once from all clients (0: as many as the open-file limit allows)")
	trustSYNData := fs.Bool("trust-syn-data", false, "connect as soon as a leg's SYN brings its header, before the client's handshake completes: only where clients cannot forge source addresses")
	cpuProfile := fs.String("cpuprofile", "", "debugging: write a CPU profile to `file` until mcpgw stops (builds with -tags profile)")
	maxSubflows := fs.Uint("max-subflows", mcpgw.DefaultMaxSubflows, "additional subflows per MPTCP connection")
	idle := fs.Duration("idle-timeout", 2*time.Hour, "close legs idle for this long (0: never)")
	logLevel := fs.String("log-level", "info", "debug or info")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Parse(args) // exits on error
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *showVersion {
		fmt.Println("mcpgw", version)
		return nil
	}
	var level slog.Level
	switch *logLevel {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	default:
		return fmt.Errorf("-log-level %q: want debug or info", *logLevel)
	}
	if *maxSubflows > mcpgw.MaxSubflows {
		return fmt.Errorf("-max-subflows %d: at most %d", *maxSubflows, mcpgw.MaxSubflows)
	}
	var onPath *mcpgw.OnPath
	switch *mode {
	case "off-path":
		if len(listen.vals) == 0 {
			listen.vals = []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:5124"), netip.MustParseAddrPort("[::]:5124")}
		}
	case "on-path":
		for _, v := range []uint{*markMask, *convertMark, *rejectMark, *tproxyMark} {
			if v > 0xffffffff {
				return fmt.Errorf("mark %#x is wider than 32 bits", v)
			}
		}
		if *queue > 0xffff {
			return fmt.Errorf("-queue %d: at most 65535", *queue)
		}
		onPath = &mcpgw.OnPath{
			Queue:        uint16(*queue),
			MarkMask:     uint32(*markMask),
			ConvertMark:  uint32(*convertMark),
			RejectMark:   uint32(*rejectMark),
			TProxyMark:   uint32(*tproxyMark),
			Table:        *table,
			RulePriority: *rulePref,
			Interfaces:   inInterfaces,
			MaxPorts:     *maxPorts,
			PortIdle:     *portIdle,
		}
	default:
		return fmt.Errorf("-mode %q: want off-path or on-path", *mode)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	srv, err := mcpgw.New(mcpgw.Config{
		Listen:            listen.vals,
		OnPath:            onPath,
		PreserveSource:    preserve.vals,
		Deny:              deny.vals,
		AllowLocal:        allowLocal.vals,
		MaxConnsPerClient: *maxConns,
		MaxConns:          *maxTotal,
		TrustSYNData:      *trustSYNData,
		MaxSubflows:       uint32(*maxSubflows),
		IdleTimeout:       *idle,
		Logger:            log,
	})
	if err != nil {
		return err
	}
	stopProfile, err := cpuprofile.Start(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return srv.Serve(ctx)
}

// listFlag is a repeatable flag of values that parse decodes.
type listFlag[T fmt.Stringer] struct {
	vals  []T
	parse func(string) (T, error)
}

func (f *listFlag[T]) String() string {
	s := make([]string, len(f.vals))
	for i, v := range f.vals {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

func (f *listFlag[T]) Set(s string) error {
	v, err := f.parse(s)
	if err != nil {
		return err
	}
	f.vals = append(f.vals, v)
	return nil
}
