package firewall

import (
	"strings"
	"testing"
	"time"
)

// testRules is a valid rule set like the agent's defaults.
func testRules() Rules {
	return Rules{
		LANInterfaces: []string{"br-lan", "lan1"},
		Queue:         7,
		TProxyPort:    7070,
		ConvertMark:   0x01000000,
		RejectMark:    0x02000000,
		TProxyMark:    0x03000000,
		MarkMask:      0x0f000000,
		AliveTimeout:  3 * time.Second,
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Rules)
		err    string // substring of the error; "" means valid
	}{
		{name: "valid", modify: func(*Rules) {}},
		{name: "no LAN", modify: func(r *Rules) { r.LANInterfaces = nil }, err: "no LAN interfaces"},
		{name: "empty name", modify: func(r *Rules) { r.LANInterfaces = []string{""} }, err: "empty"},
		{name: "name too long", modify: func(r *Rules) { r.LANInterfaces = []string{"abcdefghijklmnop"} }, err: "longer than 15"},
		{name: "longest name", modify: func(r *Rules) { r.LANInterfaces = []string{"abcdefghijklmno"} }},
		{name: "dot", modify: func(r *Rules) { r.LANInterfaces = []string{".."} }, err: "invalid"},
		{name: "space", modify: func(r *Rules) { r.LANInterfaces = []string{"br lan"} }, err: "invalid character"},
		{name: "wildcard", modify: func(r *Rules) { r.LANInterfaces = []string{"lan+"} }, err: "invalid character"},
		{name: "quote", modify: func(r *Rules) { r.LANInterfaces = []string{`lan"`} }, err: "invalid character"},
		{name: "duplicate", modify: func(r *Rules) { r.LANInterfaces = []string{"lan", "lan"} }, err: "twice"},
		{name: "port 0", modify: func(r *Rules) { r.TProxyPort = 0 }, err: "port 0"},
		{name: "mask 0", modify: func(r *Rules) { r.MarkMask = 0 }, err: "mask 0"},
		{name: "convert 0", modify: func(r *Rules) { r.ConvertMark = 0 }, err: "convert mark is 0"},
		{name: "reject outside mask", modify: func(r *Rules) { r.RejectMark = 0x10000000 }, err: "reject mark 0x10000000 is outside"},
		{name: "tproxy equals convert", modify: func(r *Rules) { r.TProxyMark = r.ConvertMark }, err: "convert mark and tproxy mark"},
		{name: "no alive timeout", modify: func(r *Rules) { r.AliveTimeout = 0 }, err: "alive timeout 0s"},
		{name: "alive timeout of a fraction", modify: func(r *Rules) { r.AliveTimeout = 1500 * time.Millisecond }, err: "alive timeout 1.5s is not a whole"},
		{name: "queue 0 is fine", modify: func(r *Rules) { r.Queue = 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := testRules()
			tt.modify(&r)
			err := r.Validate()
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.err)
			}
		})
	}
}
