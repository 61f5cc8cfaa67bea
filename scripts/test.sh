#!/usr/bin/env bash
# test.sh runs every test of the project: unit tests, privileged
# integration tests (each in network namespaces it creates) and the
# end-to-end tests on the network-namespace testbed, then every fuzz target
# for a short while. It installs what is missing first (scripts/setup.sh).
#
# Usage: scripts/test.sh            (re-runs itself with sudo if needed)
# Env:   FUZZTIME=10s               time per fuzz target; 0 skips fuzzing
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${EUID} -ne 0 ]]; then
	exec sudo -E env "PATH=${PATH}" "$0" "$@"
fi

scripts/setup.sh
export GOFLAGS="${GOFLAGS:-} -mod=mod"

echo "== go vet"
go vet ./...

echo "== build with the Go release of the OpenWrt 24.10 SDK (go1.23)"
GOTOOLCHAIN=go1.23.12 go build ./...

echo "== tests"
go test -count=1 -timeout 20m ./...

echo "== unit tests on router CPUs (mips, mipsle, arm, arm64) under qemu-user"
scripts/cross.sh test

fuzztime="${FUZZTIME:-10s}"
if [[ "${fuzztime}" != 0 ]]; then
	echo "== fuzz targets, ${fuzztime} each"
	# Each target is found where it is defined: "func FuzzX(" in a _test.go.
	grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+\(' . | sort | while read -r file; do
		dir=$(dirname "${file}")
		grep -oE '^func Fuzz[A-Za-z0-9_]+' "${file}" | cut -d' ' -f2 | while read -r target; do
			echo "-- ${dir} ${target}"
			# No minimizing: a new input still being minimized when the time
			# is up makes go test report "context deadline exceeded".
			go test -run '^$' -fuzz "^${target}\$" -fuzztime "${fuzztime}" -fuzzminimizetime 0 "${dir}" </dev/null
		done
	done
fi
