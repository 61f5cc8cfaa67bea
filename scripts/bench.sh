#!/usr/bin/env bash
# bench.sh runs the side-by-side benchmarks (internal/cmd/bench) on the
# testbed: direct TCP, mcpagent + mcpgw, shadowsocks-libev and
# redsocks + microsocks, over emulated DSL and LTE links, and writes
# bench/results.md and bench/results.json.
#
# Usage: bench.sh [bench flags]   e.g. -reps 5 -dsl 20mbit,10ms -lte 40mbit,30ms
#
# Needs root (re-runs itself with sudo), Go, and the packages of
# scripts/setup.sh. Takes about 14 minutes on a 2-core machine.
set -euo pipefail
# shellcheck source=scripts/asroot.sh
. "$(dirname "$0")/asroot.sh"
as_root "$@"
cd "$(dirname "$0")/.."
for t in ip tc iptables iperf3 curl ss ss-server ss-redir redsocks microsocks mptcpize; do
	command -v "$t" >/dev/null || {
		echo "bench.sh: $t is missing (scripts/setup.sh installs it)" >&2
		exit 1
	}
done
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/bench" ./internal/cmd/bench
"$bin/bench" -out bench -command "${BENCH_COMMAND:-scripts/bench.sh${*:+ $*}}" "$@"
