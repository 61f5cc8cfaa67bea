#!/usr/bin/env bash
# testbed.sh builds and removes the network-namespace testbed that the
# end-to-end tests, the demo and the benchmarks share.
#
# Usage:
#   testbed.sh up ID              build testbed ID
#   testbed.sh down ID            remove every namespace of testbed ID
#   testbed.sh exec ID NODE CMD.. run CMD in NODE of testbed ID
#   testbed.sh ns ID NODE         print the namespace name of NODE
#   testbed.sh link ID LINK SET.. change link dsl or lte while traffic runs:
#                                 rate=R (tc rate, both directions), and with
#                                 the emulator delay=D jitter=D loss=P up down
#
# ID is 1-12 characters of [a-z0-9]; NODE is one of lan cpe cgn core mcp srv
# (and mcpr with ONPATH=1).
# Each node is the network namespace mcpt-ID-NODE, so testbeds with different
# IDs never collide. Environment: DSL_RATE (default 20mbit) and LTE_RATE
# (default 40mbit) shape both directions of each access link with tbf; 0
# leaves that link unshaped. LINKEMU, the path of a linkemu binary
# (internal/cmd/linkemu), runs the link emulator on both directions of both
# access links (NFQUEUE 101 for DSL, 102 for LTE, on the sending side's
# mangle POSTROUTING, before tbf); DSL_LINK and LTE_LINK are its initial
# settings per direction, e.g. "delay=10ms jitter=1ms loss=0.01" (default:
# none). Without LINKEMU no emulator runs. ONPATH=1 inserts the router mcpr,
# where an on-path MCP runs, between core and srv (see below).
#
#   lan eth0 ── lan0 cpe wan0 ("dsl") ─────────── dsl0 core mcp0 ── eth0 mcp
#                        wan1 ("lte") ── lte0 cgn up0 ── cgn0    srv0 ── eth0 srv
#
#   lan   eth0 192.168.1.2/24 fd00:1::2/64; default via 192.168.1.1 / fd00:1::1
#   cpe   lan0 192.168.1.1/24 fd00:1::1/64
#         wan0 10.0.1.2/24 2001:db8:1::2/64   default metric 10, v6 default
#         wan1 100.64.0.2/24                  default metric 20
#         NAT (masquerade) out of wan0 (v4+v6) and wan1; rp_filter 0
#   cgn   lte0 100.64.0.1/24; up0 10.0.2.2/24 default via 10.0.2.1; NAT out of up0
#   core  dsl0 10.0.1.1/24 2001:db8:1::1/64; cgn0 10.0.2.1/24;
#         mcp0 198.51.100.254/24 2001:db8:4::fe/64; srv0 203.0.113.1/24 2001:db8:5::1/64
#   mcp   eth0 198.51.100.1/24 2001:db8:4::1/64; default via .254 / ::fe
#   srv   eth0 203.0.113.10/24 2001:db8:5::10/64; default via .1 / ::1
#
# With ONPATH=1, core srv0 ── up0 mcpr down0 ── eth0 srv, srv unchanged:
#   core  srv0 10.0.3.1/24 2001:db8:3::1/64; 203.0.113.0/24 and
#         2001:db8:5::/64 via mcpr
#   mcpr  up0 10.0.3.2/24 2001:db8:3::2/64, default via core;
#         down0 203.0.113.1/24 2001:db8:5::1/64; forwarding, rp_filter 0
#
# Only ip, tc, iptables and ip6tables are used. Must run as root.
set -euo pipefail

readonly nodes=(lan cpe cgn core mcp srv)
# onpath_nodes are the nodes ONPATH=1 adds.
readonly onpath_nodes=(mcpr)

die() {
	echo "testbed.sh: $*" >&2
	exit 1
}

usage() {
	sed -n '5,12s/^# //p' "$0" >&2
	exit 2
}

check_id() {
	[[ $1 =~ ^[a-z0-9]{1,12}$ ]] || die "bad testbed ID \"$1\": want 1-12 characters of [a-z0-9]"
}

check_node() {
	local n
	for n in "${nodes[@]}" "${onpath_nodes[@]}"; do
		[[ $1 == "$n" ]] && return 0
	done
	die "unknown node \"$1\": want one of ${nodes[*]}"
}

ns() { echo "mcpt-$1-$2"; }

# rundir prints the directory of testbed $1's emulator settings and logs.
rundir() { echo "/run/mcpt-$1"; }

# namespaces prints the names of the existing namespaces of testbed $1.
namespaces() {
	local name _
	ip netns list 2>/dev/null | while read -r name _; do
		if [[ $name =~ ^mcpt-$1-[a-z0-9]+$ ]]; then
			echo "$name"
		fi
	done
}

# nsexec runs "$@" inside namespace $N (set by the caller).
nsexec() { ip netns exec "$N" "$@"; }

# burst_limit prints "burst B limit L" in bytes for tbf at rate $1 (a tc rate
# such as 20mbit). The burst must hold at least one timer tick's worth of
# data (rate/HZ; HZ may be as low as 100) and one 64 KiB GSO packet, or a
# single TCP flow cannot reach the configured rate; we allow 20 ms. The
# queue holds 100 ms at the rate, and never less than four bursts.
burst_limit() {
	local v=$1 num unit bps
	[[ $v =~ ^([1-9][0-9]*)([a-z]*)$ ]] || die "bad rate \"$v\": want e.g. 20mbit, or 0 for none"
	num=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]}
	case $unit in
	"" | bit) bps=$num ;;
	kbit) bps=$((num * 1000)) ;;
	mbit) bps=$((num * 1000000)) ;;
	gbit) bps=$((num * 1000000000)) ;;
	*) die "bad rate unit in \"$v\": want bit, kbit, mbit or gbit" ;;
	esac
	local bytes=$((bps / 8)) burst limit
	burst=$((bytes / 50))
	((burst >= 65536)) || burst=65536
	limit=$((bytes / 10))
	((limit >= 4 * burst)) || limit=$((4 * burst))
	echo "burst $burst limit $limit"
}

# shape limits the egress of device $2 in namespace $1 to rate $3 (0: none).
shape() {
	local N=$1 dev=$2 rate=$3
	[[ $rate == 0 ]] && return 0
	local bl
	bl=$(burst_limit "$rate")
	# shellcheck disable=SC2086 # $bl is "burst B limit L", split on purpose.
	tc -n "$N" qdisc replace dev "$dev" root tbf rate "$rate" $bl
}

# veth makes a veth pair: $2 in namespace $1 and $4 in namespace $3.
veth() {
	ip -n "$1" link add "$2" type veth peer name "$4" netns "$3"
	ip -n "$1" link set "$2" up
	ip -n "$3" link set "$4" up
}

# addr adds address $3 to device $2 in namespace $1, without DAD for IPv6.
addr() {
	if [[ $3 == *:* ]]; then
		ip -n "$1" -6 addr add "$3" dev "$2" nodad
	else
		ip -n "$1" addr add "$3" dev "$2"
	fi
}

up() {
	local id=$1
	if [[ -n "$(namespaces "$id")" ]]; then
		die "testbed $id is already up (run: $0 down $id)"
	fi
	local dsl=${DSL_RATE:-20mbit} lte=${LTE_RATE:-40mbit}
	# Check the rates before making anything.
	[[ $dsl == 0 ]] || burst_limit "$dsl" >/dev/null
	[[ $lte == 0 ]] || burst_limit "$lte" >/dev/null

	# set -e ends the script at the first failing command; tear down
	# whatever was made by then.
	# shellcheck disable=SC2064 # expand $id now.
	trap "echo 'testbed.sh: up $id failed; tearing down' >&2; down $id" EXIT
	local lan cpe cgn core mcp srv mcpr n N onpath=${ONPATH:-0}
	[[ $onpath == 0 || $onpath == 1 ]] || die "bad ONPATH \"$onpath\": want 0 or 1"
	lan=$(ns "$id" lan) cpe=$(ns "$id" cpe) cgn=$(ns "$id" cgn)
	core=$(ns "$id" core) mcp=$(ns "$id" mcp) srv=$(ns "$id" srv)
	mcpr=$(ns "$id" mcpr)
	local -a made=("${nodes[@]}")
	((onpath)) && made+=("${onpath_nodes[@]}")

	for n in "${made[@]}"; do
		N=$(ns "$id" "$n")
		ip netns add "$N"
		ip -n "$N" link set lo up
		# Set before any link exists so that every link inherits
		# "default": no DAD (addresses usable at once), no router
		# advertisements, strict reverse-path filtering off.
		nsexec sysctl -qw \
			net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
			net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0 \
			net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	done
	for N in "$cpe" "$cgn" "$core"; do
		nsexec sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
	done

	veth "$lan" eth0 "$cpe" lan0
	veth "$cpe" wan0 "$core" dsl0
	veth "$cpe" wan1 "$cgn" lte0
	veth "$cgn" up0 "$core" cgn0
	veth "$core" mcp0 "$mcp" eth0
	if ((onpath)); then
		N=$mcpr
		nsexec sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
		veth "$core" srv0 "$mcpr" up0
		veth "$mcpr" down0 "$srv" eth0
	else
		veth "$core" srv0 "$srv" eth0
	fi

	addr "$lan" eth0 192.168.1.2/24
	addr "$lan" eth0 fd00:1::2/64
	ip -n "$lan" route add default via 192.168.1.1
	ip -n "$lan" -6 route add default via fd00:1::1

	addr "$cpe" lan0 192.168.1.1/24
	addr "$cpe" lan0 fd00:1::1/64
	addr "$cpe" wan0 10.0.1.2/24
	addr "$cpe" wan0 2001:db8:1::2/64
	addr "$cpe" wan1 100.64.0.2/24
	# Two default routes, as OpenWrt's netifd installs them for two
	# uplinks with metrics 10 and 20.
	ip -n "$cpe" route add default via 10.0.1.1 dev wan0 metric 10
	ip -n "$cpe" route add default via 100.64.0.1 dev wan1 metric 20
	ip -n "$cpe" -6 route add default via 2001:db8:1::1 dev wan0
	N=$cpe
	# The links exist now; "all" and "default" were set above, but set
	# each link too so nothing depends on inheritance rules.
	nsexec sysctl -qw net.ipv4.conf.lan0.rp_filter=0 net.ipv4.conf.wan0.rp_filter=0 \
		net.ipv4.conf.wan1.rp_filter=0 net.ipv4.conf.lo.rp_filter=0
	nsexec iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE
	nsexec iptables -t nat -A POSTROUTING -o wan1 -j MASQUERADE
	nsexec ip6tables -t nat -A POSTROUTING -o wan0 -j MASQUERADE

	addr "$cgn" lte0 100.64.0.1/24
	addr "$cgn" up0 10.0.2.2/24
	ip -n "$cgn" route add default via 10.0.2.1
	N=$cgn
	nsexec iptables -t nat -A POSTROUTING -o up0 -j MASQUERADE

	addr "$core" dsl0 10.0.1.1/24
	addr "$core" dsl0 2001:db8:1::1/64
	addr "$core" cgn0 10.0.2.1/24
	addr "$core" mcp0 198.51.100.254/24
	addr "$core" mcp0 2001:db8:4::fe/64
	if ((onpath)); then
		addr "$core" srv0 10.0.3.1/24
		addr "$core" srv0 2001:db8:3::1/64
		ip -n "$core" route add 203.0.113.0/24 via 10.0.3.2
		ip -n "$core" -6 route add 2001:db8:5::/64 via 2001:db8:3::2
		addr "$mcpr" up0 10.0.3.2/24
		addr "$mcpr" up0 2001:db8:3::2/64
		addr "$mcpr" down0 203.0.113.1/24
		addr "$mcpr" down0 2001:db8:5::1/64
		ip -n "$mcpr" route add default via 10.0.3.1
		ip -n "$mcpr" -6 route add default via 2001:db8:3::1
		N=$mcpr
		nsexec sysctl -qw net.ipv4.conf.up0.rp_filter=0 net.ipv4.conf.down0.rp_filter=0
	else
		addr "$core" srv0 203.0.113.1/24
		addr "$core" srv0 2001:db8:5::1/64
	fi

	addr "$mcp" eth0 198.51.100.1/24
	addr "$mcp" eth0 2001:db8:4::1/64
	ip -n "$mcp" route add default via 198.51.100.254
	ip -n "$mcp" -6 route add default via 2001:db8:4::fe

	addr "$srv" eth0 203.0.113.10/24
	addr "$srv" eth0 2001:db8:5::10/64
	ip -n "$srv" route add default via 203.0.113.1
	ip -n "$srv" -6 route add default via 2001:db8:5::1

	shape "$cpe" wan0 "$dsl"
	shape "$core" dsl0 "$dsl"
	shape "$cpe" wan1 "$lte"
	shape "$cgn" lte0 "$lte"
	if [[ -n ${LINKEMU:-} ]]; then
		emulate "$id" dsl "${DSL_LINK:-}" 101 "$cpe" wan0 "$core" dsl0
		emulate "$id" lte "${LTE_LINK:-}" 102 "$cpe" wan1 "$cgn" lte0
	fi
	trap - EXIT
}

# emulate runs $LINKEMU on link $2 of testbed $1 with settings $3 on queue
# $4: in namespace $5 for the packets leaving $6, in namespace $7 for those
# leaving $8. Both read the settings file $2.conf; link() changes it.
emulate() {
	local id=$1 link=$2 settings=$3 q=$4 dir N dev log i=0
	dir=$(rundir "$id")
	mkdir -p "$dir"
	printf '%s\n' "$settings" >"$dir/$link.conf"
	shift 4
	while (($#)); do
		N=$1 dev=$2 log=$dir/$link-$2.log
		shift 2
		# Not through nsexec: $! must be linkemu's PID (ip execs into it).
		ip netns exec "$N" "$LINKEMU" -queue "$q" -config "$dir/$link.conf" -seed $((q * 2 + i)) </dev/null >"$log" 2>&1 &
		echo $! >>"$dir/$link.pids"
		i=$((i + 1))
		local t
		for ((t = 0; t < 100; t++)); do
			grep -q "linkemu running" "$log" && break
			kill -0 $! 2>/dev/null || die "linkemu for $link ($dev) exited: $(cat "$log")"
			sleep 0.05
		done
		grep -q "linkemu running" "$log" || die "linkemu for $link ($dev) did not start: $(cat "$log")"
		nsexec iptables -t mangle -A POSTROUTING -o "$dev" -j NFQUEUE --queue-num "$q"
		nsexec ip6tables -t mangle -A POSTROUTING -o "$dev" -j NFQUEUE --queue-num "$q"
	done
}

# link changes link $2 (dsl or lte) of testbed $1: "rate=R" replaces the tbf
# of both directions (0: unshaped), the other settings go to the emulator.
link() {
	local id=$1 link=$2 dir w key
	shift 2
	dir=$(rundir "$id")
	local -a devs
	case $link in
	dsl) devs=("$(ns "$id" cpe)" wan0 "$(ns "$id" core)" dsl0) ;;
	lte) devs=("$(ns "$id" cpe)" wan1 "$(ns "$id" cgn)" lte0) ;;
	*) die "unknown link \"$link\": want dsl or lte" ;;
	esac
	local -A set=()
	local -a order=()
	if [[ -f $dir/$link.conf ]]; then
		for w in $(<"$dir/$link.conf"); do
			key=${w%%=*}
			[[ $key == up || $key == down ]] && key=state
			set[$key]=$w
			order+=("$key")
		done
	fi
	local rate="" emu=0
	for w in "$@"; do
		key=${w%%=*}
		case $key in
		rate) rate=${w#rate=} ;;
		up | down) set[state]=$w order+=(state) emu=1 ;;
		delay | jitter | loss) set[$key]=$w order+=("$key") emu=1 ;;
		*) die "bad link setting \"$w\": want rate=R delay=D jitter=D loss=P up or down" ;;
		esac
	done
	if [[ -n $rate ]]; then
		[[ $rate == 0 ]] || burst_limit "$rate" >/dev/null
		local i
		for ((i = 0; i < 4; i += 2)); do
			if [[ $rate == 0 ]]; then
				tc -n "${devs[i]}" qdisc del dev "${devs[i + 1]}" root 2>/dev/null || true
			else
				shape "${devs[i]}" "${devs[i + 1]}" "$rate"
			fi
		done
	fi
	((emu)) || return 0
	[[ -f $dir/$link.pids ]] || die "no link emulator on $link of testbed $id (start it with LINKEMU)"
	local line="" k
	local -A seen=()
	for k in "${order[@]}"; do
		[[ -n ${seen[$k]:-} ]] && continue
		seen[$k]=1
		line+="${set[$k]} "
	done
	printf '%s\n' "$line" >"$dir/$link.conf.tmp"
	mv "$dir/$link.conf.tmp" "$dir/$link.conf"
	local p
	while read -r p; do
		kill -HUP "$p"
	done <"$dir/$link.pids"
}

# down removes every namespace of testbed $1. Processes still running in
# them are stopped first (SIGTERM, then SIGKILL after 3 s): they would keep
# the namespace and its links alive after its name is gone. It never fails
# because something is already gone.
down() {
	local id=$1 N p i alive
	local -a all=() pids=()
	mapfile -t all < <(namespaces "$id")
	((${#all[@]})) || return 0
	for N in "${all[@]}"; do
		mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$N" 2>/dev/null || true)
	done
	if ((${#pids[@]})); then
		kill -TERM "${pids[@]}" 2>/dev/null || true
		for ((i = 0; i < 30; i++)); do
			alive=false
			for p in "${pids[@]}"; do
				if kill -0 "$p" 2>/dev/null; then
					alive=true
					break
				fi
			done
			$alive || break
			sleep 0.1
		done
		kill -KILL "${pids[@]}" 2>/dev/null || true
	fi
	for N in "${all[@]}"; do
		ip netns del "$N" 2>/dev/null || true
	done
	rm -rf "$(rundir "$id")"
}

(($# >= 2)) || usage
cmd=$1 id=$2
check_id "$id"
case $cmd in
up | down)
	(($# == 2)) || usage
	[[ ${EUID} -eq 0 ]] || die "must run as root"
	"$cmd" "$id"
	;;
exec)
	(($# >= 4)) || usage
	check_node "$3"
	N=$(ns "$id" "$3")
	shift 3
	exec ip netns exec "$N" "$@"
	;;
ns)
	(($# == 3)) || usage
	check_node "$3"
	ns "$id" "$3"
	;;
link)
	(($# >= 4)) || usage
	[[ ${EUID} -eq 0 ]] || die "must run as root"
	shift 2
	link "$id" "$@"
	;;
*) usage ;;
esac
