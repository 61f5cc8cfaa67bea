#!/usr/bin/env bash
# test.sh runs every test of the project: unit tests, privileged
# integration tests (each in network namespaces it creates) and the
# end-to-end tests on the network-namespace testbed, then every fuzz target
# for a short while. It installs what is missing first (scripts/setup.sh).
#
# Usage: scripts/test.sh            (re-runs itself with sudo if needed)
# Env:   FUZZTIME=10s               time per fuzz target; 0 skips fuzzing
set -euo pipefail
# shellcheck source=scripts/asroot.sh
. "$(dirname "$0")/asroot.sh"
as_root "$@"
cd "$(dirname "$0")/.."

scripts/setup.sh
export GOFLAGS="${GOFLAGS:-} -mod=mod"

echo "== go vet"
go vet ./...

echo "== build with the Go release of the OpenWrt 24.10 SDK (go1.23)"
GOTOOLCHAIN=go1.23.12 go build ./...

echo "== the profiling build (-tags profile: -cpuprofile of mcpagent and mcpgw)"
go vet -tags profile ./internal/cpuprofile ./cmd/...
go test -count=1 -tags profile ./internal/cpuprofile

echo "== tests"
go test -count=1 -timeout 20m ./...

echo "== unit tests on router CPUs (mips, mipsle, arm, arm64) under qemu-user"
scripts/cross.sh test

fuzztime="${FUZZTIME:-10s}"

# fuzz_target fuzzes target $2 of package directory $1 for fuzztime.
# No minimizing: a new input still being minimized when the time is up
# makes go test report "context deadline exceeded". Go before 1.27 also
# reports it, with nothing found, when the time runs out while a worker is
# busy (go.dev/issue/75804); that failure, and only that one (no failing
# input written), gets one more run.
fuzz_target() {
	local out status attempt
	out=$(mktemp)
	for attempt in 1 2; do
		status=0
		go test -run '^$' -fuzz "^$2\$" -fuzztime "${fuzztime}" -fuzzminimizetime 0 "$1" </dev/null 2>&1 | tee "${out}" || status=$?
		if [[ ${status} == 0 ]]; then
			break
		fi
		if [[ ${attempt} == 1 ]] && grep -q '^    context deadline exceeded$' "${out}" &&
			! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "${out}"; then
			echo "-- $1 $2: go's fuzzing stopped with a bare deadline error and found nothing; once more"
			continue
		fi
		break
	done
	rm -f "${out}"
	return "${status}"
}
if [[ "${fuzztime}" != 0 ]]; then
	echo "== fuzz targets, ${fuzztime} each"
	# Each target is found where it is defined: "func FuzzX(" in a _test.go.
	grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+\(' . | sort | while read -r file; do
		dir=$(dirname "${file}")
		grep -oE '^func Fuzz[A-Za-z0-9_]+' "${file}" | cut -d' ' -f2 | while read -r target; do
			echo "-- ${dir} ${target}"
			fuzz_target "${dir}" "${target}"
		done
	done
fi
