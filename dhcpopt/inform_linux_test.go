package dhcpopt

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/internal/netnstest"
)

// The link of the integration tests: the test's namespace holds the
// uplink wanIf, and a namespace of its own the ISP side ispIf, where
// dnsmasq stands in for the ISP's DHCP servers.
const (
	wanIf = "wan0"
	ispIf = "isp0"
)

// isp is the ISP side of a veth pair whose other end, wanIf, is in the
// test's namespace.
type isp struct {
	ns  string // the ISP namespace
	dir string // dnsmasq's lease file and log
}

// newISP makes the link and the ISP namespace, with the server at
// 192.0.2.1/24 and 2001:db8:4::1/64, and removes both when t ends.
func newISP(t *testing.T) *isp {
	t.Helper()
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, "ip", "sysctl", "dnsmasq")
	var id [4]byte
	rand.Read(id[:])
	p := &isp{ns: "dhcpopt-" + hex.EncodeToString(id[:]), dir: t.TempDir()}
	run(t, "ip", "netns", "add", p.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", p.ns).Run() })
	run(t, "ip", "link", "add", wanIf, "type", "veth", "peer", "name", ispIf, "netns", p.ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", wanIf).Run() })
	// Without duplicate address detection the link-local addresses are
	// usable at once.
	run(t, "sysctl", "-qw", "net.ipv6.conf."+wanIf+".accept_dad=0")
	run(t, "ip", "netns", "exec", p.ns, "sysctl", "-qw", "net.ipv6.conf."+ispIf+".accept_dad=0")
	run(t, "ip", "-n", p.ns, "addr", "add", "192.0.2.1/24", "dev", ispIf)
	run(t, "ip", "-n", p.ns, "addr", "add", "2001:db8:4::1/64", "dev", ispIf, "nodad")
	run(t, "ip", "-n", p.ns, "link", "set", ispIf, "up")
	run(t, "ip", "link", "set", wanIf, "up")
	waitFor(t, "link-local address on "+wanIf, func() bool {
		_, ok := pickLinkLocal(interfaceAddrs(t, wanIf))
		return ok
	})
	return p
}

// dnsmasq runs dnsmasq on the ISP side with args added to a configuration
// that serves only DHCP, until t ends. It returns the path of its log.
func (p *isp) dnsmasq(t *testing.T, args ...string) (logPath string) {
	t.Helper()
	logPath = filepath.Join(p.dir, "dnsmasq.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.ns, "dnsmasq",
		"--no-daemon", "--conf-file=/dev/null", "--pid-file=", "--port=0",
		"--dhcp-leasefile=" + filepath.Join(p.dir, "leases"),
		"--interface=" + ispIf, "--bind-interfaces", "--log-facility=-", "--log-dhcp", "--no-ping",
	}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// "ip netns exec" execs dnsmasq: the PID is dnsmasq's.
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitFor(t, "dnsmasq to start", func() bool {
		b, _ := os.ReadFile(logPath)
		return bytes.Contains(b, []byte("DHCP"))
	})
	return logPath
}

// TestIntegrationInformV4 asks a real dnsmasq for the MCP list with
// DHCPINFORM, and checks what InformV4 makes of good, malformed and
// missing options.
func TestIntegrationInformV4(t *testing.T) {
	p := newISP(t)
	run(t, "ip", "addr", "add", "192.0.2.10/24", "dev", wanIf)
	tests := []struct {
		name    string
		option  []string // dnsmasq arguments; none: no server
		timeout time.Duration
		want    []netip.Addr
		reject  rejection
		wantErr error
	}{
		{name: "two addresses in order", option: []string{"--dhcp-option=224,198.51.100.1,198.51.100.2"},
			timeout: 5 * time.Second, want: addrs("198.51.100.1", "198.51.100.2")},
		{name: "raw bytes", option: []string{"--dhcp-option=224,0a:1f:03:02"},
			timeout: 5 * time.Second, want: addrs("10.31.3.2")},
		{name: "odd length", option: []string{"--dhcp-option=224,0a:1f:03"},
			timeout: time.Second, reject: rejection{Reason: ReasonLength}},
		{name: "loopback", option: []string{"--dhcp-option=224,198.51.100.1,127.0.0.1"},
			timeout: time.Second, reject: rejection{ReasonLoopback, netip.MustParseAddr("127.0.0.1")}},
		{name: "option absent", option: []string{"--dhcp-option=225,198.51.100.1"},
			timeout: time.Second, wantErr: ErrAbsent},
		{name: "no server", timeout: time.Second, wantErr: ErrNoReply},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.option != nil {
				p.dnsmasq(t, append([]string{"--dhcp-range=192.0.2.0,static,255.255.255.0"}, tt.option...)...)
			}
			start, goroutines := time.Now(), runtime.NumGoroutine()
			got, err := InformV4(context.Background(), InformConfig{Interface: wanIf, Timeout: tt.timeout})
			t.Logf("InformV4 after %v: %v, %v", time.Since(start).Round(time.Millisecond), got, err)
			checkGoroutines(t, goroutines)
			checkResult(t, got, err, tt.want, tt.reject, tt.wantErr)
		})
	}
}

// TestIntegrationInformV6 asks a real dnsmasq for the MCP list with an
// Information-Request.
func TestIntegrationInformV6(t *testing.T) {
	p := newISP(t)
	tests := []struct {
		name    string
		option  string
		timeout time.Duration
		want    []netip.Addr
		reject  rejection
		wantErr error
	}{
		{name: "one address", option: "--dhcp-option=option6:65001,[2001:db8:4::1]",
			timeout: 5 * time.Second, want: addrs("2001:db8:4::1")},
		{name: "two addresses in order", option: "--dhcp-option=option6:65001,[2001:db8:4::2],[2001:db8:4::1]",
			timeout: 5 * time.Second, want: addrs("2001:db8:4::2", "2001:db8:4::1")},
		{name: "loopback", option: "--dhcp-option=option6:65001,[::1]",
			timeout: time.Second, reject: rejection{ReasonLoopback, netip.IPv6Loopback()}},
		{name: "option absent", option: "--dhcp-option=option6:65002,[2001:db8:4::1]",
			timeout: time.Second, wantErr: ErrAbsent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.dnsmasq(t, "--dhcp-range=2001:db8:4::,static,64", tt.option)
			start, goroutines := time.Now(), runtime.NumGoroutine()
			got, err := InformV6(context.Background(), InformConfig{Interface: wanIf, Timeout: tt.timeout})
			t.Logf("InformV6 after %v: %v, %v", time.Since(start).Round(time.Millisecond), got, err)
			checkGoroutines(t, goroutines)
			checkResult(t, got, err, tt.want, tt.reject, tt.wantErr)
		})
	}
}

// TestIntegrationInformKeepsLease lets udhcpc, the stand-in for the
// system's DHCP client, take a lease, then runs InformV4 on the same
// interface and checks that the lease and the interface's addresses are
// unchanged and that the server saw only a DHCPINFORM from us. It also
// checks that udhcpc hands the option to its hook script as opt224=<hex>,
// which FromHex and ParseV4 decode.
func TestIntegrationInformKeepsLease(t *testing.T) {
	p := newISP(t)
	netnstest.RequireTool(t, "udhcpc")
	logPath := p.dnsmasq(t, "--dhcp-range=192.0.2.50,192.0.2.59,255.255.255.0,1h",
		"--dhcp-option=224,198.51.100.1,198.51.100.2")

	dir := t.TempDir()
	script := filepath.Join(dir, "udhcpc.script")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(`#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface" ;;
bound|renew) ip addr replace "$ip/$mask" dev "$interface"; env > %q.tmp; mv %q.tmp %q ;;
esac
`, dir+"/env", dir+"/env", dir+"/env")), 0o755); err != nil {
		t.Fatal(err)
	}
	udhcpc := exec.Command("udhcpc", "-f", "-i", wanIf, "-s", script, "-O", "224", "-t", "10", "-T", "1")
	udhcpcLog, err := os.Create(filepath.Join(dir, "udhcpc.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer udhcpcLog.Close()
	udhcpc.Stdout, udhcpc.Stderr = udhcpcLog, udhcpcLog
	udhcpc.Env = []string{"PATH=" + os.Getenv("PATH")}
	udhcpc.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := udhcpc.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- udhcpc.Wait() }()
	t.Cleanup(func() {
		udhcpc.Process.Kill()
		<-exited
	})
	var env []byte
	waitFor(t, "udhcpc to take a lease", func() bool {
		env, _ = os.ReadFile(filepath.Join(dir, "env"))
		return env != nil
	})

	// The hook's view of the option.
	var opt string
	for _, kv := range strings.Split(string(env), "\n") {
		if v, ok := strings.CutPrefix(kv, "opt224="); ok {
			opt = v
		}
	}
	payload, err := FromHex(opt)
	if err != nil {
		t.Fatalf("udhcpc hook env opt224=%q: %v", opt, err)
	}
	hookList, err := ParseV4(payload)
	if diff := cmp.Diff(addrs("198.51.100.1", "198.51.100.2"), hookList, addrCmp); err != nil || diff != "" {
		t.Fatalf("udhcpc hook env opt224=%q: %v (-want +got):\n%s", opt, err, diff)
	}

	leasesPath := filepath.Join(p.dir, "leases")
	leasesBefore := readFile(t, leasesPath)
	addrsBefore := interfaceAddrs(t, wanIf)
	lease, ok := pickV4(addrsBefore)
	if !ok || !bytes.Contains(leasesBefore, []byte(" "+lease.String()+" ")) {
		t.Fatalf("leased address %v (of %v) not in the lease file:\n%s", lease, addrsBefore, leasesBefore)
	}
	logBefore := len(readFile(t, logPath))

	got, err := InformV4(context.Background(), InformConfig{Interface: wanIf, Timeout: 5 * time.Second})
	if diff := cmp.Diff(addrs("198.51.100.1", "198.51.100.2"), got, addrCmp); err != nil || diff != "" {
		t.Fatalf("InformV4: %v (-want +got):\n%s", err, diff)
	}

	if leasesAfter := readFile(t, leasesPath); !bytes.Equal(leasesAfter, leasesBefore) {
		t.Errorf("lease file changed:\n%s\nwas:\n%s", leasesAfter, leasesBefore)
	}
	if diff := cmp.Diff(fmt.Sprint(addrsBefore), fmt.Sprint(interfaceAddrs(t, wanIf))); diff != "" {
		t.Errorf("addresses of %s changed (-before +after):\n%s", wanIf, diff)
	}
	// What the server saw of the exchange.
	serverLog := string(readFile(t, logPath)[logBefore:])
	for _, want := range []string{"DHCPINFORM(" + ispIf + ") " + lease.String(), "DHCPACK(" + ispIf + ") " + lease.String()} {
		if !strings.Contains(serverLog, want) {
			t.Errorf("dnsmasq did not log %q:\n%s", want, serverLog)
		}
	}
	for _, unwanted := range []string{"DHCPDISCOVER", "DHCPREQUEST", "DHCPRELEASE", "DHCPDECLINE"} {
		if strings.Contains(serverLog, unwanted) {
			t.Errorf("dnsmasq logged %s during the inform:\n%s", unwanted, serverLog)
		}
	}
	select {
	case err := <-exited:
		t.Errorf("udhcpc exited: %v\n%s", err, readFile(t, udhcpcLog.Name()))
	default:
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func interfaceAddrs(t *testing.T, name string) []net.Addr {
	t.Helper()
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	as, err := ifi.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(as, func(a, b net.Addr) int { return strings.Compare(a.String(), b.String()) })
	return as
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// checkGoroutines fails t if more than want goroutines are still running
// after a second: one that is ending as the call returns has that long,
// one left blocked does not.
func checkGoroutines(t *testing.T, want int) {
	t.Helper()
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(time.Second); n > want && time.Now().Before(deadline); n = runtime.NumGoroutine() {
		time.Sleep(10 * time.Millisecond)
	}
	if n > want {
		t.Errorf("%d goroutines left running", n-want)
	}
}
