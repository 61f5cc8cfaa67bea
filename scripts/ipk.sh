#!/usr/bin/env bash
# ipk.sh builds dist/mcpagent_<version>_<arch>.ipk, the OpenWrt package
# that `opkg install` takes, without the OpenWrt SDK: a static Go binary and
# the files of openwrt/mcpagent/files, packed the way OpenWrt's ipkg-build
# packs them (gzip'd tar of debian-binary, data.tar.gz, control.tar.gz;
# owner root, names sorted, every mtime SOURCE_DATE_EPOCH, gzip -n), so one
# commit always gives the same bytes. Dependencies, description, section,
# URL, release and conffiles are read from openwrt/mcpagent/Makefile, so
# this package and the SDK's declare the same.
#
# Usage: scripts/ipk.sh ARCH [OUTDIR]   (make ipk ARCH=...)
#        ARCH: mipsel_24kc mips_24kc aarch64_cortex-a53
#              arm_cortex-a7_neon-vfpv4 x86_64, or all
#        OUTDIR: default dist
# Env:   VERSION            what mcpagent -version prints (git describe)
#        PKG_VERSION        the package version (from git tags vX.Y.Z)
#        SOURCE_DATE_EPOCH  mtime of every file (commit time)
set -euo pipefail
cd "$(dirname "$0")/.."

makefile=openwrt/mcpagent/Makefile
files=openwrt/mcpagent/files

# goenv prints the Go target of an OpenWrt package architecture. The MIPS
# 24Kc has no FPU: softfloat, not the kernel's slow FPU emulation.
goenv() {
	case "$1" in
	mipsel_24kc) echo "GOARCH=mipsle GOMIPS=softfloat" ;;
	mips_24kc) echo "GOARCH=mips GOMIPS=softfloat" ;;
	aarch64_cortex-a53) echo "GOARCH=arm64" ;;
	arm_cortex-a7_neon-vfpv4) echo "GOARCH=arm GOARM=7" ;;
	x86_64) echo "GOARCH=amd64" ;;
	*) return 1 ;;
	esac
}
all_arches="mipsel_24kc mips_24kc aarch64_cortex-a53 arm_cortex-a7_neon-vfpv4 x86_64"

die() {
	echo "ipk.sh: $*" >&2
	exit 1
}

# define prints the body of `define NAME` ... `endef` in the Makefile.
define() {
	sed -n "\\|^define $1\$|,\\|^endef\$|{\\|^define |d;\\|^endef\$|d;p}" "${makefile}"
}

# field prints the value of `NAME:=value` in the Makefile's package block.
field() {
	define Package/mcpagent | sed -n "s/^[[:space:]]*$1:=//p"
}

arch=${1:-}
outdir=${2:-dist}
if [[ "${arch}" == all ]]; then
	for a in ${all_arches}; do
		"$0" "${a}" "${outdir}"
	done
	exit 0
fi
goenv "${arch}" >/dev/null || die "usage: $0 ARCH [OUTDIR]; ARCH is one of: ${all_arches} all"

if [[ -z "${SOURCE_DATE_EPOCH:-}" || -z "${PKG_VERSION:-}" ]]; then
	git rev-parse --git-dir >/dev/null 2>&1 || die "not a git checkout: set SOURCE_DATE_EPOCH and PKG_VERSION"
fi
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
# Package versions sort the way opkg compares them: 1.2.0 < 1.2.0+git3.abc
# (3 commits later) < 1.3.0, and 0~git<date>.<commit> before any release.
if [[ -z "${PKG_VERSION:-}" ]]; then
	if described=$(git describe --tags --long --match 'v[0-9]*' 2>/dev/null); then
		tag=${described%-*-g*}          # vX.Y.Z
		ahead=${described#"${tag}"-}    # N-gHASH
		PKG_VERSION=${tag#v}
		[[ "${ahead%%-*}" == 0 ]] || PKG_VERSION+="+git${ahead%%-*}.${ahead#*-g}"
	else
		PKG_VERSION="0~git$(date -u -d "@${epoch}" +%Y%m%d).$(git rev-parse --short=8 HEAD)"
	fi
fi
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo "${PKG_VERSION}")}
release=$(sed -n 's/^PKG_RELEASE:=//p' "${makefile}")
version="${PKG_VERSION}-r${release}"

# Dependencies: the +package words of DEPENDS, after libc as the SDK adds it.
depends="libc"
for d in $(define Package/mcpagent | grep -o '+[A-Za-z0-9._-]*'); do
	depends+=", ${d#+}"
done

work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT
root="${work}/data"
ctrl="${work}/control"
pkg="${work}/pkg"
install -d -m 0755 "${root}" "${ctrl}" "${pkg}" \
	"${root}/usr/sbin" "${root}/etc/init.d" "${root}/etc/config" "${root}/etc/uci-defaults" \
	"${root}/etc/udhcpc.user.d" "${root}/etc/odhcp6c.user.d"

# shellcheck disable=SC2046 # goenv prints VAR=value words
env CGO_ENABLED=0 GOOS=linux $(goenv "${arch}") \
	go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" \
	-o "${root}/usr/sbin/mcpagent" ./cmd/mcpagent
chmod 0755 "${root}/usr/sbin/mcpagent"
# Modes as OpenWrt's INSTALL_BIN and INSTALL_CONF set them.
install -m 0755 "${files}/mcpagent.init" "${root}/etc/init.d/mcpagent"
install -m 0600 "${files}/mcpagent.config" "${root}/etc/config/mcpagent"
install -m 0755 "${files}/mcpagent.uci-defaults" "${root}/etc/uci-defaults/mcpagent"
# The DHCP hooks, sourced by netifd's DHCP scripts (INSTALL_DATA).
install -m 0644 "${files}/mcpagent.udhcpc" "${root}/etc/udhcpc.user.d/mcpagent"
install -m 0644 "${files}/mcpagent.odhcp6c" "${root}/etc/odhcp6c.user.d/mcpagent"

# tarz writes a gzip'd tar of paths under dir the way ipkg-build does.
tarz() {
	local dir=$1
	shift
	tar --format=gnu --numeric-owner --owner=0 --group=0 --sort=name \
		--mtime="@${epoch}" -C "${dir}" -cf - "$@" | gzip -n
}

tarz "${root}" . >"${pkg}/data.tar.gz"
# ipkg-build's Installed-Size: the bytes of the uncompressed data.tar.
installed_size=$(gzip -dc "${pkg}/data.tar.gz" | wc -c)

{
	echo "Package: mcpagent"
	echo "Version: ${version}"
	echo "Depends: ${depends}"
	echo "Source: feeds/mcpagent/mcpagent"
	echo "SourceName: mcpagent"
	echo "Section: $(field SECTION)"
	echo "SourceDateEpoch: ${epoch}"
	echo "URL: $(field URL)"
	echo "Architecture: ${arch}"
	echo "Installed-Size: ${installed_size}"
	# As package-pack.mk writes it: every line indented by one blank.
	printf "Description: "
	define Package/mcpagent/description | sed -e 's,^[[:space:]]*, ,g'
} >"${ctrl}/control"
define Package/mcpagent/conffiles >"${ctrl}/conffiles"
# OpenWrt's default maintainer scripts (package-pack.mk), quoted: opkg
# install enables and starts the service, removal stops and disables it.
cat >"${ctrl}/postinst" <<'EOF'
#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
# shellcheck source=/dev/null # OpenWrt's, on the router
. "${IPKG_INSTROOT}/lib/functions.sh"
default_postinst "$0" "$@"
EOF
cat >"${ctrl}/prerm" <<'EOF'
#!/bin/sh
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
# shellcheck source=/dev/null # OpenWrt's, on the router
. "${IPKG_INSTROOT}/lib/functions.sh"
default_prerm "$0" "$@"
EOF
chmod 0644 "${ctrl}/control" "${ctrl}/conffiles"
chmod 0755 "${ctrl}/postinst" "${ctrl}/prerm"
tarz "${ctrl}" . >"${pkg}/control.tar.gz"

echo "2.0" >"${pkg}/debian-binary"
chmod 0644 "${pkg}/debian-binary" "${pkg}/data.tar.gz" "${pkg}/control.tar.gz"
mkdir -p "${outdir}"
out="${outdir}/mcpagent_${version}_${arch}.ipk"
tarz "${pkg}" ./debian-binary ./data.tar.gz ./control.tar.gz >"${out}.tmp"
mv "${out}.tmp" "${out}"
echo "${out}: $(stat -c %s "${out}") bytes, mcpagent $(stat -c %s "${root}/usr/sbin/mcpagent") bytes"
