package testbed

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/internal/netnstest"
)

// Options shape the testbed's access links.
type Options struct {
	// DSLRate and LTERate are tc rates such as "20mbit" for both
	// directions of the DSL and LTE links. "" means the script's default
	// (20mbit and 40mbit), "0" leaves the link unshaped.
	DSLRate, LTERate string
	// Emulate runs the link emulator (internal/cmd/linkemu) on both
	// directions of both access links, so that SetLink can change their
	// delay, jitter, loss and state while traffic runs. DSLLink and
	// LTELink are its initial settings per direction, in
	// linkemu.ParseParams' syntax ("delay=10ms jitter=1ms loss=0.01");
	// "" adds nothing. Without Emulate they must be "".
	Emulate          bool
	DSLLink, LTELink string
	// OnPath inserts the router mcpr between core and srv (ONPATH=1 in
	// scripts/testbed.sh), where an on-path mcpgw runs; srv keeps its
	// addresses.
	OnPath bool
}

// Testbed is one running testbed. Its methods are safe for concurrent use.
type Testbed struct {
	// ID names the testbed; its namespaces are mcpt-ID-NODE.
	ID string

	script string // path of scripts/testbed.sh

	mu       sync.Mutex
	procs    []*Process // started in the testbed, stopped before teardown
	downOnce sync.Once
}

// Runtime bounds.
const (
	scriptTimeout = time.Minute     // testbed.sh up/down
	runTimeout    = 2 * time.Minute // Run
	waitTimeout   = 10 * time.Second
	stopGrace     = 3 * time.Second // SIGTERM (or SIGINT) to SIGKILL
)

// Up builds a testbed with a fresh random ID. It registers a cleanup on t
// that, even when the test fails, first stops every process started with
// Start or Capture and then removes all of the testbed's namespaces.
// Without root or the needed programs it skips t (fails it when CI=true).
func Up(t testing.TB, o Options) *Testbed {
	t.Helper()
	netnstest.Require(t, os.Geteuid() == 0, "root (the testbed makes network namespaces)")
	netnstest.RequireTool(t, "bash", "ip", "tc", "iptables", "ip6tables", "go")
	tb := &Testbed{ID: newID(t), script: filepath.Join(moduleRoot(t), "scripts", "testbed.sh")}
	// Register before "up": a half-built testbed is removed too.
	t.Cleanup(func() { tb.down(t) })
	if !o.Emulate && (o.DSLLink != "" || o.LTELink != "") {
		t.Fatalf("testbed: link settings %q, %q need Options.Emulate", o.DSLLink, o.LTELink)
	}
	env := withoutVars(os.Environ(), "DSL_RATE", "LTE_RATE", "LINKEMU", "DSL_LINK", "LTE_LINK", "ONPATH")
	if o.OnPath {
		env = append(env, "ONPATH=1")
	}
	if o.Emulate {
		env = append(env, "LINKEMU="+BuildBinary(t, "./internal/cmd/linkemu"),
			"DSL_LINK="+o.DSLLink, "LTE_LINK="+o.LTELink)
	}
	if o.DSLRate != "" {
		env = append(env, "DSL_RATE="+o.DSLRate)
	}
	if o.LTERate != "" {
		env = append(env, "LTE_RATE="+o.LTERate)
	}
	if out, err := tb.script1(env, "up"); err != nil {
		t.Fatalf("testbed %s up: %v\n%s", tb.ID, err, out)
	}
	return tb
}

// newID returns 6 random characters of [a-z0-9].
func newID(t testing.TB) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random testbed id: %v", err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// withoutVars returns env without the variables named.
func withoutVars(env []string, names ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// script1 runs "testbed.sh VERB ID" with env (nil: the current one).
func (tb *Testbed) script1(env []string, verb string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", tb.script, verb, tb.ID)
	cmd.Env = env
	return cmd.CombinedOutput()
}

// down stops the processes started in the testbed and removes its
// namespaces. Only the first call does anything.
func (tb *Testbed) down(t testing.TB) {
	tb.downOnce.Do(func() {
		tb.mu.Lock()
		procs := tb.procs
		tb.procs = nil
		tb.mu.Unlock()
		for _, p := range procs {
			p.Stop()
		}
		if out, err := tb.script1(nil, "down"); err != nil {
			t.Errorf("testbed %s down: %v\n%s", tb.ID, err, out)
		}
	})
}

// SetLink changes access link "dsl" or "lte" in both directions while
// traffic runs ("testbed.sh link"): "rate=R" (a tc rate, "0" for none)
// needs nothing else; "delay=D", "jitter=D", "loss=P", "up" and "down" need
// Options.Emulate and keep the settings not named. The emulator applies
// them within milliseconds of the return.
func (tb *Testbed) SetLink(t testing.TB, link string, settings ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", append([]string{tb.script, "link", tb.ID, link}, settings...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("testbed %s: link %s %s: %v\n%s", tb.ID, link, strings.Join(settings, " "), err, out)
	}
}

// NS returns the name of node's network namespace.
func (tb *Testbed) NS(node string) string { return "mcpt-" + tb.ID + "-" + node }

// Command returns a command that runs name with args in node
// ("ip netns exec NS name args..."). The process is name itself: ip execs
// into it, so its PID is the program's.
func (tb *Testbed) Command(ctx context.Context, node, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", tb.NS(node), name}, args...)...)
	setPdeathsig(cmd)
	return cmd
}

// Run runs name with args in node to completion (at most two minutes)
// and returns its stdout. It fails t, showing stdout and stderr, if the
// command fails.
func (tb *Testbed) Run(t testing.TB, node, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := tb.Command(ctx, node, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %s %s: %v\nstdout:\n%s\nstderr:\n%s", node, name, strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String()
}

// Process is a long-lived program started with Start. Its methods are
// safe for concurrent use.
type Process struct {
	cmd  *exec.Cmd
	log  string        // file holding stdout and stderr
	done chan struct{} // closed when the process has exited
	err  error         // exit status; valid once done is closed
}

// Start runs name with args in node, writing its stdout and stderr to the
// file logName in a directory from t.TempDir. When waitFor is not empty,
// Start waits up to ten seconds until that text appears in the output and
// fails t if it does not (or the process exits first). The process is
// stopped (SIGTERM, SIGKILL after 3 s) when t ends, and before the
// testbed's teardown at the latest; if t failed, its output is logged.
func (tb *Testbed) Start(t testing.TB, node, logName, waitFor string, name string, args ...string) *Process {
	t.Helper()
	p := tb.start(t, node, filepath.Join(t.TempDir(), logName), name, args...)
	if waitFor == "" {
		return p
	}
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(p.Output(), waitFor) {
		select {
		case <-p.done:
			if strings.Contains(p.Output(), waitFor) {
				return p
			}
			t.Fatalf("%s: %s exited (%v) before printing %q; output:\n%s", node, name, p.err, waitFor, p.Output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s did not print %q within %v; output:\n%s", node, name, waitFor, waitTimeout, p.Output())
		}
	}
	return p
}

// start starts the process logging to logPath and arranges its stop.
func (tb *Testbed) start(t testing.TB, node, logPath, name string, args ...string) *Process {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("create log: %v", err)
	}
	defer f.Close() // the child holds its own descriptor
	cmd := tb.Command(context.Background(), node, name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: start %s: %v", node, name, err)
	}
	p := &Process{cmd: cmd, log: logPath, done: make(chan struct{})}
	go p.wait()
	tb.mu.Lock()
	tb.procs = append(tb.procs, p)
	tb.mu.Unlock()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s: output of %s (%s):\n%s", node, name, filepath.Base(logPath), p.Output())
		}
	})
	return p
}

// wait reaps the process.
func (p *Process) wait() {
	p.err = p.cmd.Wait()
	close(p.done)
}

// PID returns the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the process; after it has exited it returns
// os.ErrProcessDone.
func (p *Process) Signal(sig os.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	return p.cmd.Process.Signal(sig)
}

// Wait waits for the process to exit and returns its exit error, as
// exec.Cmd.Wait does. It may be called any number of times.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Output returns what the process has written so far.
func (p *Process) Output() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", p.log, err)
	}
	return string(b)
}

// Stop sends SIGTERM, and SIGKILL if the process has not exited 3 s
// later, then waits for it to exit. Stopping an exited process does
// nothing.
func (p *Process) Stop() { p.stop(syscall.SIGTERM) }

// stop signals sig, then SIGKILL after stopGrace, and waits. Signal
// errors are ignored: the only one expected is that the process has
// exited, and then done is (or is about to be) closed.
func (p *Process) stop(sig os.Signal) {
	p.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		p.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// Capture is a running tcpdump started with Testbed.Capture.
type Capture struct {
	p    *Process
	path string
}

// Capture starts "tcpdump --immediate-mode -U -w FILE -i ifname filter" in
// node and returns
// once tcpdump is capturing. filter may be empty. Stop ends it; if the
// test does not, it ends with the test.
func (tb *Testbed) Capture(t testing.TB, node, ifname, filter string) *Capture {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, node+"-"+ifname+".pcap")
	// Immediate mode: without it libpcap hands packets over in blocks that
	// the kernel retires on a timer, and a short capture can end with
	// packets counted by the filter but never written.
	args := []string{"-n", "--immediate-mode", "-U", "-w", path, "-i", ifname}
	if filter != "" {
		args = append(args, filter)
	}
	return &Capture{p: tb.Start(t, node, node+"-"+ifname+".tcpdump.log", "listening on", "tcpdump", args...), path: path}
}

// Stop ends the capture (SIGINT, so tcpdump flushes and closes the file)
// and returns the path of the pcap file, which lives until the test ends.
func (c *Capture) Stop() string {
	// tcpdump counts a packet as received by the filter before it reads
	// it from the kernel's buffer; a moment lets it write what the test
	// just sent, or SIGINT would lose the last packets.
	time.Sleep(captureDrain)
	c.p.stop(os.Interrupt)
	return c.path
}

// captureDrain is how long Stop lets tcpdump catch up before ending it.
const captureDrain = 300 * time.Millisecond

// builds holds one build per package path for the life of the test
// binary.
var builds struct {
	mu sync.Mutex
	m  map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// BuildBinary builds the main package pkg, a path relative to the module
// root such as "./cmd/mcpgw", once per test binary and returns the
// executable's path. Binaries go to a directory under os.TempDir named
// after the module root, replaced atomically on each build, so parallel
// test binaries can share it and nothing accumulates.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	netnstest.RequireTool(t, "go")
	builds.mu.Lock()
	if builds.m == nil {
		builds.m = make(map[string]*build)
	}
	b := builds.m[pkg]
	if b == nil {
		b = new(build)
		builds.m[pkg] = b
	}
	builds.mu.Unlock()
	b.once.Do(func() { b.path, b.err = goBuild(moduleRoot(t), pkg) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// goBuild builds pkg in the module at root.
func goBuild(root, pkg string) (string, error) {
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), "mcpagent-testbin-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	name := strings.Trim(strings.NewReplacer("/", "_", ".", "").Replace(pkg), "_")
	final := filepath.Join(dir, name)
	tmp, err := os.CreateTemp(dir, name+".tmp*")
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp.Name(), pkg)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	return final, nil
}

// moduleRoot returns the directory of this module's go.mod.
func moduleRoot(t testing.TB) string {
	t.Helper()
	root, err := findModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// findModuleRoot asks go once per test binary.
var findModuleRoot = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find module root: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("find module root: not inside a module")
	}
	return filepath.Dir(gomod), nil
})

// MakeFile writes n random bytes to a new file in dir and returns its path
// and the hex SHA-256 of its content.
func MakeFile(t testing.TB, dir string, n int) (path, sum string) {
	t.Helper()
	f, err := os.CreateTemp(dir, "random-*.bin")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, int64(n)); err != nil {
		f.Close()
		t.Fatalf("write %s: %v", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("write %s: %v", f.Name(), err)
	}
	return f.Name(), hex.EncodeToString(h.Sum(nil))
}
