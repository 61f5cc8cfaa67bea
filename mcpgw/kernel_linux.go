package mcpgw

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/mcpagent/mcpagent/mptcpleg"
	"github.com/mcpagent/mcpagent/mptcppm"
)

// Sysctl files in the current network namespace, and the bits of
// net.ipv4.tcp_fastopen a Fast Open server without cookies needs
// (Documentation/networking/ip-sysctl.rst: TFO_SERVER_ENABLE 0x2,
// TFO_SERVER_COOKIE_NOT_REQD 0x200).
const (
	sysctlMPTCPEnabled = "/proc/sys/net/mptcp/enabled"
	sysctlFastOpen     = "/proc/sys/net/ipv4/tcp_fastopen"
	fastOpenServerBits = 0x2 | 0x200
)

// prepareKernel makes the network namespace fit for Serve: MPTCP on, the
// Fast Open server bits set (the others kept), and the path manager's
// limits at maxSubflows subflows and no accepted ADD_ADDR (an MCP has no
// reason to open subflows toward addresses a client announces). It changes
// only what is not already right, and names the setting it cannot change.
func prepareKernel(maxSubflows uint32) error {
	enabled, err := readSysctl(sysctlMPTCPEnabled)
	if errors.Is(err, os.ErrNotExist) {
		return errors.New("this kernel has no Multipath TCP (net.mptcp.enabled missing: needs Linux 5.6+ with CONFIG_MPTCP)")
	}
	if err != nil {
		return err
	}
	if enabled != 1 {
		if err := writeSysctl(sysctlMPTCPEnabled, 1); err != nil {
			return fmt.Errorf("enable Multipath TCP (sysctl net.mptcp.enabled=1): %w", err)
		}
	}
	if mptcpleg.CheckFastOpenServer() != nil {
		tfo, err := readSysctl(sysctlFastOpen)
		if err != nil {
			return err
		}
		if err := writeSysctl(sysctlFastOpen, tfo|fastOpenServerBits); err != nil {
			return fmt.Errorf("enable the TCP Fast Open server (sysctl net.ipv4.tcp_fastopen=%#x): %w", tfo|fastOpenServerBits, err)
		}
	}
	pm, err := mptcppm.Dial()
	if err != nil {
		return fmt.Errorf("open the MPTCP path manager: %w", err)
	}
	defer pm.Close()
	want := mptcppm.Limits{AddAddrAccepted: 0, Subflows: maxSubflows}
	got, err := pm.Limits()
	if err != nil {
		return fmt.Errorf("read MPTCP limits: %w", err)
	}
	if got != want {
		if err := pm.SetLimits(want); err != nil {
			return fmt.Errorf("set MPTCP limits (ip mptcp limits set subflows %d add_addr_accepted %d): %w",
				want.Subflows, want.AddAddrAccepted, err)
		}
	}
	return nil
}

func readSysctl(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return v, nil
}

func writeSysctl(path string, v int) error {
	return os.WriteFile(path, []byte(strconv.Itoa(v)+"\n"), 0o644)
}

// filesReserved are the descriptors maxConnsForFiles leaves for listeners,
// the relay's pipes and epoll instances, netlink sockets and logs.
const filesReserved = 64

// maxConnsForFiles returns how many legs the open-file limit (soft, which
// Go raises to the hard limit at start) leaves room for, two descriptors
// each, besides filesReserved and the extra descriptors of the on-path
// listeners.
func maxConnsForFiles(extra int) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<30 {
		return 1 << 29
	}
	return max(int(lim.Cur)-filesReserved-extra, 2) / 2
}
