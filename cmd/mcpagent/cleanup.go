package main

import (
	"context"
	"flag"
	"log/slog"
	"os"

	"github.com/mcpagent/mcpagent/agent"
)

// cleanupCmd removes what an agent that did not stop cleanly left: see
// agent.Cleanup. The init script runs it after every stop.
func cleanupCmd(args []string) int {
	fs := flag.NewFlagSet("mcpagent cleanup", flag.ContinueOnError)
	load := configFlags(fs)
	cfg := parseConfig(fs, load, args)
	if cfg == nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := agent.Cleanup(context.Background(), cfg, log); err != nil {
		log.Error("mcpagent cleanup", "err", err)
		return 1
	}
	return 0
}
