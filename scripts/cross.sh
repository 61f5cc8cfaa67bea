#!/usr/bin/env bash
# cross.sh builds mcpagent and mcpgw for the CPUs OpenWrt routers use, or
# runs the unit tests on those CPUs under qemu-user.
#
# Usage: scripts/cross.sh build   (make cross)
#            static, stripped binaries in dist/cross/linux_<arch>/, with sizes
#        scripts/cross.sh test    (make test-cross)
#            go test ./... for mips, mipsle, arm and arm64 under
#            qemu-<cpu>-static (scripts/setup.sh installs qemu-user-static)
#
# The tests run in an unprivileged user namespace (unshare --user): qemu-user
# cannot emulate clone(CLONE_NEWNET), so netnstest.Main, which re-executes
# a root test binary in a fresh network namespace, would fail. Without root
# it runs the tests in place, and the privileged TestIntegration* tests are
# skipped by name anyway: they need the kernel of the host, not qemu's CPU.
# So are the Test*InChild tests, which run the test binary again as a child:
# the kernel cannot execute a binary of another CPU by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

# GOARCH, the setting routers of that CPU need, and qemu-user's name for it.
targets=(
	"mips GOMIPS=softfloat mips"
	"mipsle GOMIPS=softfloat mipsel"
	"arm GOARM=7 arm"
	"arm64 - aarch64"
	"amd64 - x86_64"
)
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}

# goenv sets env to the Go settings of target line $1 and qemu to its CPU.
goenv() {
	local goarch variant
	read -r goarch variant qemu <<<"$1"
	env=(CGO_ENABLED=0 GOOS=linux "GOARCH=${goarch}")
	[[ "${variant}" == - ]] || env+=("${variant}")
}

build() {
	local t out cmd qemu
	local -a env
	printf '%-8s %-10s %10s\n' GOARCH binary bytes
	for t in "${targets[@]}"; do
		goenv "${t}"
		out="dist/cross/linux_${t%% *}"
		mkdir -p "${out}"
		for cmd in mcpagent mcpgw; do
			env "${env[@]}" go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${version}" \
				-o "${out}/${cmd}" "./cmd/${cmd}"
			printf '%-8s %-10s %10d\n' "${t%% *}" "${cmd}" "$(stat -c %s "${out}/${cmd}")"
		done
	done
}

unit_tests() {
	local t qemu
	local -a env failed=()
	for t in "${targets[@]}"; do
		[[ "${t}" == amd64* ]] && continue # the host runs those natively
		goenv "${t}"
		if ! command -v "qemu-${qemu}-static" >/dev/null; then
			echo "cross.sh: qemu-${qemu}-static missing (run scripts/setup.sh)" >&2
			exit 1
		fi
		echo "== go test under qemu-${qemu}-static (${env[*]})"
		env "${env[@]}" go test -count=1 -skip 'Integration|InChild' -exec "unshare --user qemu-${qemu}-static" ./... ||
			failed+=("${t%% *}")
	done
	if ((${#failed[@]} > 0)); then
		echo "cross.sh: tests failed on ${failed[*]}" >&2
		exit 1
	fi
}

case "${1:-}" in
build) build ;;
test) unit_tests ;;
*)
	echo "usage: $0 build|test" >&2
	exit 2
	;;
esac
