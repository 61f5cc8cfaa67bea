# shellcheck shell=bash
# asroot.sh, sourced by the scripts that need root, defines as_root.

# as_root re-runs the calling script with sudo unless it runs as root
# already. Call it before changing directory, with the script's arguments.
# It keeps the environment (Go, a proxy) and the user's PATH, adds root's
# sbin directories (ip, tc, iptables, nft, sysctl), which Debian leaves out
# of a user's PATH, and sets root's own home, so that Go's caches made by
# root do not land in the user's.
as_root() {
	[[ ${EUID} -eq 0 ]] && return
	local script="${BASH_SOURCE[1]}"
	if [[ -n ${AS_ROOT_TRIED:-} ]] || ! command -v sudo >/dev/null; then
		echo "$(basename "${script}"): needs root; run it as root (or install sudo)" >&2
		exit 1
	fi
	local self home
	self="$(cd "$(dirname "${script}")" && pwd)/$(basename "${script}")"
	home="$(getent passwd root | cut -d: -f6)"
	exec sudo -E env AS_ROOT_TRIED=1 "PATH=/usr/local/sbin:/usr/sbin:/sbin:${PATH}" "HOME=${home:-/root}" "${self}" "$@"
}
