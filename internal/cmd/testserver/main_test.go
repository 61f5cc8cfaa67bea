package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/internal/netnstest"
)

func TestMain(m *testing.M) { netnstest.Main(m) }

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    config
		wantErr bool
	}{
		{
			name: "http twice",
			args: []string{"-http", "127.0.0.1:80", "-http", "[::1]:80", "-dir", "d", "-mptcp", "-report-mptcp"},
			want: config{http: []string{"127.0.0.1:80", "[::1]:80"}, dir: "d", mptcp: true, reportMPTCP: true},
		},
		{
			name: "echo only",
			args: []string{"-echo", ":7"},
			want: config{echo: []string{":7"}},
		},
		{name: "no listener", args: []string{"-dir", "d"}, wantErr: true},
		{name: "http without dir", args: []string{"-http", ":80"}, wantErr: true},
		{name: "stray argument", args: []string{"-echo", ":7", "x"}, wantErr: true},
		{name: "unknown flag", args: []string{"-echo", ":7", "-x"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			got, err := parseFlags(tt.args, &stderr)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v; stderr:\n%s", err, tt.wantErr, stderr.String())
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(config{})); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

// lines collects what run prints, one Write per line.
type lines chan string

func (l lines) Write(p []byte) (int, error) { l <- string(p); return len(p), nil }

// start runs the server for cfg until the test ends and returns the bound
// addresses in the order of cfg.http then cfg.echo.
func start(t *testing.T, cfg config) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := make(lines, 16)
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("run did not return after cancel")
		}
	})
	var addrs []string
	for len(addrs) < len(cfg.http)+len(cfg.echo) {
		select {
		case l := <-out:
			a, ok := strings.CutPrefix(strings.TrimSuffix(l, "\n"), "listening ")
			if !ok {
				t.Fatalf("printed %q, want \"listening ADDR\"", l)
			}
			addrs = append(addrs, a)
		case err := <-done:
			t.Fatalf("run: %v", err)
		}
	}
	return addrs
}

// get fetches url over a connection that uses MPTCP when mptcp is set.
func get(t *testing.T, url string, mptcp bool) string {
	t.Helper()
	var d net.Dialer
	d.SetMultipathTCP(mptcp)
	c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

// TestServe checks file serving, echo and /mptcp over plain TCP on
// loopback; it needs no privileges.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	content := "hello from testserver\n"
	if err := os.WriteFile(filepath.Join(dir, "f.txt"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	addrs := start(t, config{http: []string{"127.0.0.1:0"}, echo: []string{"127.0.0.1:0"}, dir: dir, reportMPTCP: true})

	if got := get(t, "http://"+addrs[0]+"/f.txt", false); got != content {
		t.Errorf("GET /f.txt = %q, want %q", got, content)
	}
	if got := get(t, "http://"+addrs[0]+"/mptcp", false); got != "tcp" {
		t.Errorf("GET /mptcp = %q, want %q", got, "tcp")
	}

	c, err := net.DialTimeout("tcp", addrs[1], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("ping over echo")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Errorf("echo returned %q, want %q", got, msg)
	}
}

// TestIntegrationReportMPTCP checks that /mptcp tells what the kernel did
// with each connection, over IPv4 and IPv6, for every pairing of MPTCP
// and plain TCP listener and client.
func TestIntegrationReportMPTCP(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	plain := start(t, config{http: []string{"127.0.0.1:0", "[::1]:0"}, dir: t.TempDir(), reportMPTCP: true})
	multi := start(t, config{http: []string{"127.0.0.1:0", "[::1]:0"}, dir: t.TempDir(), mptcp: true, reportMPTCP: true})
	tests := []struct {
		name   string
		addr   string
		client bool // client uses MPTCP
		want   string
	}{
		{name: "v4 mptcp listener mptcp client", addr: multi[0], client: true, want: "mptcp"},
		{name: "v6 mptcp listener mptcp client", addr: multi[1], client: true, want: "mptcp"},
		{name: "v4 mptcp listener tcp client", addr: multi[0], want: "tcp"},
		{name: "v6 mptcp listener tcp client", addr: multi[1], want: "tcp"},
		{name: "v4 tcp listener mptcp client", addr: plain[0], client: true, want: "tcp"},
		{name: "v6 tcp listener mptcp client", addr: plain[1], client: true, want: "tcp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := get(t, "http://"+tt.addr+"/mptcp", tt.client); got != tt.want {
				t.Errorf("GET /mptcp = %q, want %q", got, tt.want)
			}
		})
	}
}
