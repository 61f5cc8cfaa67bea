// Package netnstest runs a test binary inside a network namespace of its
// own, so that privileged tests (sockets bound to test addresses, netfilter
// rules, MPTCP endpoints, sysctls) never touch the host's network.
//
// A package opts in from TestMain:
//
//	func TestMain(m *testing.M) { netnstest.Main(m) }
//
// As root, Main re-executes the test binary in a fresh network namespace
// (CLONE_NEWNET) with only a loopback interface, which it brings up; the
// namespace disappears with the process. Without root the tests run where
// they are, and each privileged test calls Require, which skips with a
// message naming what is missing — or, when CI=true, fails: in CI a missing
// prerequisite is an error, never a silent skip.
//
// Package netnstest is for tests only.
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// insideEnv marks the re-executed child so it does not re-execute again.
const insideEnv = "MCPAGENT_NETNSTEST_INSIDE"

// Main runs m, in a fresh network namespace when the process is root.
// It never returns.
func Main(m *testing.M) {
	if os.Geteuid() != 0 || os.Getenv(insideEnv) != "" {
		if os.Getenv(insideEnv) != "" {
			if err := loopbackUp(); err != nil {
				fmt.Fprintf(os.Stderr, "netnstest: bring up lo: %v\n", err)
				os.Exit(1)
			}
		}
		os.Exit(m.Run())
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), insideEnv+"=1")
	cmd.SysProcAttr = newNetNSAttr()
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintf(os.Stderr, "netnstest: run tests in a new network namespace: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Isolated reports whether this process runs in the namespace Main made.
func Isolated() bool { return os.Getenv(insideEnv) != "" }

// Require stops t unless ok: a skip that names what is missing, or a
// failure when CI=true.
func Require(t testing.TB, ok bool, format string, args ...any) {
	t.Helper()
	if ok {
		return
	}
	msg := "missing prerequisite: " + fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// RequireIsolatedRoot requires that the test runs as root inside the
// namespace made by Main.
func RequireIsolatedRoot(t testing.TB) {
	t.Helper()
	Require(t, os.Geteuid() == 0 && Isolated(), "root and a private network namespace (run the tests as root)")
}

// RequireTool requires that the named programs are on PATH.
func RequireTool(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		_, err := exec.LookPath(n)
		Require(t, err == nil, "program %q (install it with scripts/setup.sh)", n)
	}
}
