#!/usr/bin/env bash
# setup.sh installs the system packages that the tests, the demo and the
# benchmarks need on a Debian 12 machine that already has Go.
#
# It is idempotent and quiet: when every package is already installed it
# does not touch apt at all. It keeps Debian's default iptables backend
# (iptables-nft); the testbed works with either backend.
#
# Usage: sudo scripts/setup.sh
set -euo pipefail

# Debian packages, one per tool the project's scripts and tests run.
packages=(
	iproute2      # ip, tc
	iptables      # iptables, ip6tables (nft backend by default)
	nftables      # nft: the agent's nftables backend (firewall tests)
	tcpdump
	tshark        # dissects MPTCP options in captures
	curl
	iperf3
	socat
	dnsmasq-base  # DHCP server standing in for an ISP
	mptcpize      # runs unmodified programs over MPTCP
	udhcpc
	ethtool
	kmod          # modprobe
	procps        # sysctl, ps
	coreutils     # sha256sum, timeout
	shellcheck    # checks the scripts in this directory
	busybox       # sh -n with the ash OpenWrt runs (openwrt/ tests)
	qemu-user-static # tests and binaries for router CPUs (make test-cross)
	shadowsocks-libev # ss-redir, ss-server: compared in make bench
	redsocks          # compared in make bench, with microsocks
	microsocks        # SOCKS5 server for redsocks (make bench)
)

if [[ ${EUID} -ne 0 ]]; then
	echo "setup.sh: must run as root (try: sudo $0)" >&2
	exit 1
fi

# installed reports whether the Debian package $1 is fully installed.
installed() {
	[[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

missing=()
for p in "${packages[@]}"; do
	installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "setup.sh: installing ${missing[*]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# run_quiet runs "$@" and shows its output only when it fails.
run_quiet() {
	if ! "$@" >"$log" 2>&1; then
		cat "$log" >&2
		echo "setup.sh: failed: $*" >&2
		exit 1
	fi
}
run_quiet apt-get update
# tshark asks whether non-root users may capture; answer no without a prompt.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
run_quiet apt-get install -y --no-install-recommends "${missing[@]}"
