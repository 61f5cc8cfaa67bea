package openwrt_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/internal/netnstest"
)

// openwrtStandIns stands in for the parts of OpenWrt's shell library
// (/lib/functions.sh, procd.sh) that the init script calls, with the
// property that matters here: config_foreach declares "section" local, as
// OpenWrt's does. The configuration comes from CONFIG_<section>_<option>
// variables and the space-separated CONFIG_SECTIONS; procd's calls and
// the log go to standard output, one line each.
const openwrtStandIns = `
config_load() { :; }
config_foreach() {
	local fn="$1" type="$2" section cfgtype
	for section in $CONFIG_SECTIONS; do
		eval "cfgtype=\${CONFIG_${section}_TYPE}"
		[ "$cfgtype" = "$type" ] && "$fn" "$section"
	done
}
config_get() { eval "$1=\${CONFIG_${2}_${3}}"; }
config_get_bool() {
	local v
	eval "v=\${CONFIG_${2}_${3}:-$4}"
	case "$v" in 1|on|true|yes|enabled) v=1 ;; *) v=0 ;; esac
	eval "$1=$v"
}
config_list_foreach() {
	local item
	eval "for item in \${CONFIG_${1}_${2}}; do $3 \"\$item\"; done"
}
# uci keeps options in UCI_<key> variables, the key's dots and brackets
# made underscores; "show network" prints UCI_SHOW_network. Changes are
# printed.
uci_var() { echo "UCI_$1" | tr '.@[]=' '_____'; }
uci() {
	[ "$1" = -q ] && shift
	[ "$1" = -t ] && shift 2 # its change directory: the stand-in keeps none
	case "$1" in
	get) eval "v=\${$(uci_var "$2")-}"; [ -n "$v" ] && echo "$v" ;;
	set) eval "$(uci_var "${2%%=*}")=\"${2#*=}\""; echo "uci set $2" ;;
	delete) unset "$(uci_var "$2")" ;;
	show) eval "echo \"\${UCI_SHOW_$2-}\"" ;;
	commit) echo "uci commit $2" ;;
	esac
}
procd_open_instance() { echo open; }
procd_set_param() { echo "set $*"; }
procd_append_param() { echo "append $*"; }
procd_close_instance() { echo close; }
logger() {
	echo "logger $*"
	while read -r line; do echo "logger< $line"; done
}
`

// TestInitScript runs the init script's start_service with busybox sh, as
// on a router: what it hands procd for a given configuration.
func TestInitScript(t *testing.T) {
	netnstest.RequireTool(t, "busybox")
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "lib/functions"), 0o755); err != nil {
		t.Fatal(err)
	}
	network := `network_get_device() { eval "$1=\${NETDEV_$2}"; }` + "\n"
	if err := os.WriteFile(filepath.Join(root, "lib/functions/network.sh"), []byte(network), 0o644); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs("mcpagent/files/mcpagent.init")
	if err != nil {
		t.Fatal(err)
	}
	// An anonymous main section, as a user's file may have, and two
	// uplinks; wwan is up on another device than the configured one.
	const config = `CONFIG_SECTIONS="cfg01 dsl lte"
CONFIG_cfg01_TYPE=mcpagent
CONFIG_cfg01_lan_interface="br-lan lan2"
CONFIG_dsl_TYPE=uplink
CONFIG_dsl_interface=pppoe-wan
CONFIG_dsl_network=wan
CONFIG_lte_TYPE=uplink
CONFIG_lte_interface=wwan0
CONFIG_lte_network=wwan
NETDEV_wan=pppoe-wan
NETDEV_wwan=wwan1
UCI_network_wan_proto=dhcp
UCI_network_wan_device=eth1
UCI_network_wan6_proto=dhcpv6
UCI_network_wan6_device=@wan
UCI_network_wwan_proto=dhcp
UCI_network_wwan_reqopts=121
UCI_SHOW_network="network.wan.proto='dhcp'
network.wan6.proto='dhcpv6'
network.wwan.proto='dhcp'"
`
	var runIn func(t *testing.T, shell string) []string
	run := func(t *testing.T, enabled string) []string {
		t.Helper()
		return runIn(t, enabled+"\n. "+script+"\nPROG=true\nstart_service\n")
	}
	runIn = func(t *testing.T, shell string) []string {
		t.Helper()
		sh := openwrtStandIns + config + shell
		cmd := exec.Command("busybox", "sh", "-c", sh)
		cmd.Env = append(os.Environ(), "IPKG_INSTROOT="+root)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("start_service: %v\n%s", err, out)
		}
		return strings.Split(strings.TrimSpace(string(out)), "\n")
	}

	t.Run("stopped", func(t *testing.T) {
		got := runIn(t, ". "+script+"\nPROG=echo\nservice_stopped\n")
		if want := []string{"logger -t mcpagent", "logger< cleanup -uci /etc/config/mcpagent"}; !slices.Equal(got, want) {
			t.Errorf("service_stopped did %q, want %q", got, want)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		if got := run(t, "CONFIG_cfg01_enabled=0"); len(got) != 1 || got[0] != "" {
			t.Errorf("with enabled 0, start_service did %q; want nothing", got)
		}
	})
	t.Run("enabled", func(t *testing.T) {
		want := []string{
			// The uplinks' networks ask for the MCP option codes.
			"uci set network.wan.reqopts=224",
			"uci set network.wan6.reqopts=65001",
			"uci set network.wwan.reqopts=121 224",
			"uci commit network",
			"logger -p daemon.notice -t mcpagent added the MCP option codes to the DHCP request options of: wan wan6 wwan (effective at their next ifup)",
			"open",
			"set command true -uci /etc/config/mcpagent",
			"set file /etc/config/mcpagent true",
			"set respawn 3600 5 5",
			"set term_timeout 15",
			"set limits nofile=65536 65536",
			"set stdout 1",
			"set stderr 1",
			"append netdev br-lan",
			"append netdev lan2",
			"logger -p daemon.warn -t mcpagent uplink lte: network wwan is up on wwan1, not on interface wwan0",
			"close",
		}
		if diff := cmp.Diff(want, run(t, "CONFIG_cfg01_enabled=1")); diff != "" {
			t.Errorf("start_service (-want +got):\n%s", diff)
		}
	})
	t.Run("request options already there", func(t *testing.T) {
		got := run(t, "CONFIG_cfg01_enabled=1\nUCI_network_wan_reqopts=224\nUCI_network_wan6_reqopts='23 65001'\nUCI_network_wwan_reqopts='121 224'")
		if got[0] != "open" {
			t.Errorf("with the codes requested already, start_service began with %q; want no change to the network configuration", got[:2])
		}
	})
}
