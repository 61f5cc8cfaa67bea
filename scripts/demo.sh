#!/usr/bin/env bash
# demo.sh shows the product end to end on one machine: it installs what is
# missing, builds mcpagent and mcpgw, brings up the network-namespace
# testbed (LAN host, router with a DSL and an LTE uplink, ISP core, MCP
# host, server), starts mcpgw and the agent, downloads a file from the LAN
# host and reports what each uplink carried and whether the file arrived
# intact. Everything it started and created is removed on exit.
#
# Usage: scripts/demo.sh            (re-runs itself with sudo if needed)
# Env:   SIZE_MB=20 DSL_RATE=20mbit LTE_RATE=40mbit
set -euo pipefail
# shellcheck source=scripts/asroot.sh
. "$(dirname "$0")/asroot.sh"
as_root "$@"
cd "$(dirname "$0")/.."

size_mb="${SIZE_MB:-20}"
id="demo$$"
work=$(mktemp -d)
mkdir "${work}/log"
pids=()

cleanup() {
	for pid in "${pids[@]}"; do
		kill "${pid}" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "${pid}" 2>/dev/null || true
	done
	scripts/testbed.sh down "${id}" >/dev/null 2>&1 || true
	rm -rf "${work}"
}
trap cleanup EXIT

# on NODE CMD... runs CMD in a testbed node.
on() {
	local node=$1
	shift
	ip netns exec "mcpt-${id}-${node}" "$@"
}

# start NODE LOG READY CMD... runs CMD in the background in NODE and waits
# until READY appears in its log.
start() {
	local node=$1 log=$2 ready=$3
	shift 3
	on "${node}" "$@" >"${work}/log/${log}" 2>&1 &
	pids+=($!)
	for _ in $(seq 100); do
		grep -q "${ready}" "${work}/log/${log}" && return 0
		sleep 0.1
	done
	echo "demo: ${log} did not start:" >&2
	cat "${work}/log/${log}" >&2
	exit 1
}

rx_bytes() { on cpe cat "/sys/class/net/$1/statistics/rx_bytes"; }

echo "== installing what is missing"
scripts/setup.sh
echo "== building"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
CGO_ENABLED=0 go build -trimpath -o "${work}/mcpagent" ./cmd/mcpagent
CGO_ENABLED=0 go build -trimpath -o "${work}/mcpgw" ./cmd/mcpgw
CGO_ENABLED=0 go build -trimpath -o "${work}/testserver" ./internal/cmd/testserver

echo "== testbed up (DSL ${DSL_RATE:-20mbit}, LTE ${LTE_RATE:-40mbit})"
scripts/testbed.sh up "${id}"
mkdir "${work}/www"
head -c "$((size_mb << 20))" /dev/urandom >"${work}/www/file.bin"
want=$(sha256sum "${work}/www/file.bin" | cut -d' ' -f1)

start srv testserver listening "${work}/testserver" -dir "${work}/www" -http 203.0.113.10:8080
start mcp mcpgw listening "${work}/mcpgw" -listen 198.51.100.1:5124

# fetch downloads the file from the LAN host and prints the seconds taken.
fetch() {
	on lan curl -sS --fail -o "${work}/got.bin" -w '%{time_total}' http://203.0.113.10:8080/file.bin
}

echo "== downloading ${size_mb} MB without the agent (plain routing over DSL)"
direct=$(fetch)
cat >"${work}/mcpagent.yaml" <<YAML
lan_interfaces: [lan0]
uplinks:
  - name: dsl
    interface: wan0
  - name: lte
    interface: wan1
mcp:
  servers: ["198.51.100.1:5124"]
leg_timeout: 1.5s
fallback: direct
control_socket: ${work}/mcpagent.sock
YAML
start cpe mcpagent "agent running" "${work}/mcpagent" -config "${work}/mcpagent.yaml"

echo "== downloading ${size_mb} MB from the LAN host through the agent"
dsl0=$(rx_bytes wan0)
lte0=$(rx_bytes wan1)
secs=$(fetch)
dsl=$(($(rx_bytes wan0) - dsl0))
lte=$(($(rx_bytes wan1) - lte0))
got=$(sha256sum "${work}/got.bin" | cut -d' ' -f1)

echo
echo "== report"
awk -v d="${dsl}" -v l="${lte}" -v secs="${secs}" -v direct="${direct}" -v mb="${size_mb}" 'BEGIN {
	s = d + l
	printf "  dsl (wan0) carried %12d bytes  %5.1f%%\n", d, 100 * d / s
	printf "  lte (wan1) carried %12d bytes  %5.1f%%\n", l, 100 * l / s
	printf "  through the agent: %d MB in %.2f s, %.1f Mbit/s\n", mb, secs, mb * 8 * 1.048576 / secs
	printf "  DSL alone:         %d MB in %.2f s, %.1f Mbit/s\n", mb, direct, mb * 8 * 1.048576 / direct
}'
if [[ "${got}" == "${want}" ]]; then
	echo "  sha256 ${got}: the file arrived intact"
else
	echo "  sha256 MISMATCH: got ${got}, want ${want}" >&2
	exit 1
fi
