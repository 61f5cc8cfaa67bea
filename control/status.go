package control

import (
	"context"
	"fmt"
)

// MaxResponse bounds the size of one response line, newline included: a
// status lists every relayed connection, a few hundred bytes each.
const MaxResponse = 16 << 20

// StatusRequest asks the agent for its Status. It has no parameters.
type StatusRequest struct{}

// Status is what the running agent reports of its uplinks and relayed
// connections at one moment.
type Status struct {
	Uplinks     []UplinkStatus `json:"uplinks"`
	Connections []ConnStatus   `json:"connections"`
	// Counters are the agent's counts of SYNs by outcome since it
	// started: converted, fallback, native, rejected, ...
	Counters map[string]uint64 `json:"counters"`
}

// UplinkStatus is one uplink, in configuration order.
type UplinkStatus struct {
	Name      string `json:"name"`
	Interface string `json:"interface"`
	Role      string `json:"role"` // active, backup or on-demand
	Priority  int    `json:"priority"`
	Community string `json:"community,omitempty"`
	// State is "up" (link up with an address) or "down".
	State string `json:"state"`
	// Healthy reports whether its probes toward the MCP succeed.
	Healthy bool `json:"healthy"`
	// Use is how subflows use it now: "active", "backup" or "none".
	Use      string   `json:"use"`
	Addrs    []string `json:"addrs"`
	Subflows int      `json:"subflows"` // established, over all relayed connections
	RxBytes  uint64   `json:"rx_bytes"`
	TxBytes  uint64   `json:"tx_bytes"`
}

// ConnStatus is one relayed LAN connection and its leg.
type ConnStatus struct {
	Client      string `json:"client"`      // the LAN host's address:port
	Destination string `json:"destination"` // the server's address:port
	MCP         string `json:"mcp"`         // where the leg goes
	// MPTCP is false for a leg that fell back to plain TCP.
	MPTCP    bool            `json:"mptcp"`
	Subflows []SubflowStatus `json:"subflows"`
}

// SubflowStatus is one subflow of a leg.
type SubflowStatus struct {
	Local  string `json:"local"`
	Remote string `json:"remote"`
	// Uplink is the name of the uplink whose address Local is; empty if
	// none is.
	Uplink string `json:"uplink,omitempty"`
	// Backup reports whether the subflow's uplink is used as backup.
	Backup bool `json:"backup,omitempty"`
	// State is the subflow's TCP state: "established" while it can carry
	// data; "fin-wait-1" and the like while it closes (the closing
	// subflow of a dead uplink can stay so for minutes).
	State string `json:"state"`
}

// QueryStatus asks the agent listening on path for its status, waiting at
// most Timeout or until ctx ends.
func QueryStatus(ctx context.Context, path string) (Status, error) {
	resp, err := exchange(ctx, path, Request{Status: &StatusRequest{}})
	if err != nil {
		return Status{}, err
	}
	if resp.Status == nil {
		return Status{}, fmt.Errorf("read the agent's answer: no status in it")
	}
	return *resp.Status, nil
}
