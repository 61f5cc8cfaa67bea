package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "testserver:", err)
		os.Exit(1)
	}
}

// config is what the command line asks for.
type config struct {
	http        []string // HTTP listen addresses
	echo        []string // echo listen addresses
	dir         string   // directory served over HTTP
	mptcp       bool     // listeners accept MPTCP
	reportMPTCP bool     // serve /mptcp
}

// addrList is a repeatable string flag.
type addrList []string

func (l *addrList) String() string     { return strings.Join(*l, ",") }
func (l *addrList) Set(s string) error { *l = append(*l, s); return nil }

// parseFlags parses args; usage and errors go to errOut.
func parseFlags(args []string, errOut io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("testserver", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.Var((*addrList)(&cfg.http), "http", "serve -dir over HTTP on `ADDR` (repeatable)")
	fs.Var((*addrList)(&cfg.echo), "echo", "echo TCP streams on `ADDR` (repeatable)")
	fs.StringVar(&cfg.dir, "dir", "", "serve files from `DIR`")
	fs.BoolVar(&cfg.mptcp, "mptcp", false, "listeners accept Multipath TCP")
	fs.BoolVar(&cfg.reportMPTCP, "report-mptcp", false, `answer GET /mptcp with "mptcp" or "tcp"`)
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	var err error
	switch {
	case fs.NArg() > 0:
		err = fmt.Errorf("unexpected arguments: %q", fs.Args())
	case len(cfg.http) == 0 && len(cfg.echo) == 0:
		err = errors.New("no listener: give -http or -echo")
	case len(cfg.http) > 0 && cfg.dir == "":
		err = errors.New("-http needs -dir")
	}
	if err != nil {
		fmt.Fprintln(errOut, "testserver:", err)
		fs.Usage()
		return config{}, err
	}
	return cfg, nil
}

// connKey is the context key under which the HTTP server stores the
// request's connection.
type connKey struct{}

// run listens on every address in cfg, prints "listening ADDR" to out for
// each, and serves until ctx is done. It returns once every connection
// handler has finished.
func run(ctx context.Context, cfg config, out io.Writer) error {
	var lc net.ListenConfig
	// Set explicitly both ways: the default depends on the Go version and
	// the GODEBUG multipathtcp setting.
	lc.SetMultipathTCP(cfg.mptcp)

	var httpLns, echoLns []net.Listener
	closeAll := func() {
		for _, ln := range append(httpLns, echoLns...) {
			ln.Close()
		}
	}
	listen := func(addr string) (net.Listener, error) {
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		fmt.Fprintf(out, "listening %s\n", ln.Addr())
		return ln, nil
	}
	for _, a := range cfg.http {
		ln, err := listen(a)
		if err != nil {
			closeAll()
			return err
		}
		httpLns = append(httpLns, ln)
	}
	for _, a := range cfg.echo {
		ln, err := listen(a)
		if err != nil {
			closeAll()
			return err
		}
		echoLns = append(echoLns, ln)
	}

	mux := http.NewServeMux()
	if cfg.dir != "" {
		mux.Handle("/", http.FileServer(http.Dir(cfg.dir)))
	}
	if cfg.reportMPTCP {
		mux.HandleFunc("/mptcp", serveMPTCP)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	var wg sync.WaitGroup
	errc := make(chan error, len(httpLns)+len(echoLns))
	for _, ln := range httpLns {
		wg.Add(1)
		go func(ln net.Listener) {
			defer wg.Done()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
			}
		}(ln)
	}
	e := &echoServer{conns: make(map[net.Conn]struct{})}
	for _, ln := range echoLns {
		wg.Add(1)
		go func(ln net.Listener) {
			defer wg.Done()
			if err := e.serve(ln); err != nil {
				errc <- err
			}
		}(ln)
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if srv.Shutdown(sctx) != nil {
		srv.Close()
	}
	e.close(echoLns)
	wg.Wait()
	return err
}

// serveMPTCP answers "mptcp" when the request's connection uses Multipath
// TCP and "tcp" when it does not (a plain TCP listener, or a client that
// fell back to TCP).
func serveMPTCP(w http.ResponseWriter, r *http.Request) {
	c, ok := r.Context().Value(connKey{}).(*net.TCPConn)
	if !ok {
		http.Error(w, "not a TCP connection", http.StatusInternalServerError)
		return
	}
	used, err := c.MultipathTCP()
	if err != nil {
		http.Error(w, fmt.Sprintf("query mptcp: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	if used {
		io.WriteString(w, "mptcp")
	} else {
		io.WriteString(w, "tcp")
	}
}

// echoServer writes every byte it reads back to the sender. It is safe
// for concurrent use.
type echoServer struct {
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup // one per connection
}

// serve accepts connections on ln until ln is closed.
func (e *echoServer) serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			c.Close()
			return nil
		}
		e.conns[c] = struct{}{}
		e.wg.Add(1)
		e.mu.Unlock()
		go e.echo(c)
	}
}

// echo copies c to itself until the peer closes its side, then closes c.
func (e *echoServer) echo(c net.Conn) {
	defer e.wg.Done()
	io.Copy(c, c)
	c.Close()
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
}

// close closes the listeners and every open connection and waits for the
// connection goroutines.
func (e *echoServer) close(lns []net.Listener) {
	e.mu.Lock()
	e.closed = true
	for _, ln := range lns {
		ln.Close()
	}
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}
