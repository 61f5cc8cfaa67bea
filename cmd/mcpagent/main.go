// Command mcpagent is the upstream Multipath Conversion Point of a hybrid-
// access router: it carries the LAN's TCP connections over Multipath TCP
// legs that use every uplink, to a downstream MCP that converts them back.
//
//	mcpagent -config /etc/mcpagent/mcpagent.yaml
//	mcpagent -uci /etc/config/mcpagent   # OpenWrt: the UCI file instead
//	mcpagent -check -config FILE   # validate the configuration and exit
//	mcpagent dhcp-event -uci FILE -family 4 -event bound -interface wan
//	                               # from a DHCP client's hook: hand the
//	                               # agent the options in the environment
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mcpagent/mcpagent/agent"
	"github.com/mcpagent/mcpagent/config"
)

// version is set at link time (-X main.version=...).
var version = "dev"

func main() {
	os.Exit(run())
}

func run() int {
	if len(os.Args) > 1 && os.Args[1] == "dhcp-event" {
		return dhcpEvent(os.Args[2:])
	}
	configPath := flag.String("config", "/etc/mcpagent/mcpagent.yaml", "configuration `file`")
	uciPath := flag.String("uci", "", "read the OpenWrt UCI `file` (/etc/config/mcpagent) instead of -config")
	check := flag.Bool("check", false, "validate the configuration and exit")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("mcpagent", version)
		return 0
	}
	load, path := config.Load, *configPath
	if *uciPath != "" {
		load, path = config.LoadUCI, *uciPath
	}
	cfg, err := load(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcpagent:", err)
		return 2
	}
	if *check {
		fmt.Println("configuration ok")
		return 0
	}
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel)) // checked by config
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, cfg, log); err != nil {
		log.Error("mcpagent stopped", "err", err)
		return 1
	}
	return 0
}
