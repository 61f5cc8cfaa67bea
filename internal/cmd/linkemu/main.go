package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mcpagent/mcpagent/internal/linkemu"
)

func main() {
	fs := flag.NewFlagSet("linkemu", flag.ContinueOnError)
	queue := fs.Uint("queue", 0, "bind NFQUEUE `N`")
	config := fs.String("config", "", "read settings from `FILE` (again on SIGHUP)")
	seed := fs.Uint64("seed", 1, "seed of the random loss and jitter")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *queue == 0 || *queue > 65535 || *config == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: linkemu -queue N -config FILE [-seed S]")
		os.Exit(2)
	}
	if err := run(uint16(*queue), *config, *seed, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "linkemu:", err)
		os.Exit(1)
	}
}

// run emulates until SIGINT or SIGTERM.
func run(queue uint16, config string, seed uint64, out io.Writer) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)
	p, err := readParams(config)
	if err != nil {
		return err
	}
	l, err := linkemu.Open(linkemu.Config{
		Queue:  queue,
		Params: p,
		Seed:   seed,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Fprintf(out, "linkemu running queue %d: %s\n", queue, p)
	for s := range sig {
		if s != syscall.SIGHUP {
			break
		}
		p, err := readParams(config)
		if err != nil {
			fmt.Fprintln(os.Stderr, "linkemu: keeping the settings:", err)
			continue
		}
		l.Set(p)
		fmt.Fprintf(out, "linkemu running queue %d: %s\n", queue, p)
	}
	st := l.Stats()
	fmt.Fprintf(out, "linkemu queue %d: passed %d, dropped %d, errors %d\n", queue, st.Passed, st.Dropped, st.Errors)
	return l.Close()
}

func readParams(path string) (linkemu.Params, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return linkemu.Params{}, fmt.Errorf("read settings: %w", err)
	}
	p, err := linkemu.ParseParams(string(b))
	if err != nil {
		return linkemu.Params{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}
