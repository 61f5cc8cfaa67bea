package mcpgw

import (
	"net/netip"
	"testing"
)

func TestClientOf(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":                 "192.0.2.7",
		"::ffff:192.0.2.7":          "192.0.2.7",
		"2001:db8:1:2:aaaa::1":      "2001:db8:1:2::",
		"2001:db8:1:2:ffff:ffff::9": "2001:db8:1:2::",
		"2001:db8:1:3::1":           "2001:db8:1:3::",
	} {
		if got := clientOf(netip.MustParseAddr(in)); got != netip.MustParseAddr(want) {
			t.Errorf("clientOf(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestAdmit checks both limits: per client, where the addresses of one
// IPv6 /64 are one client, and over all clients.
func TestAdmit(t *testing.T) {
	s, err := New(Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, MaxConnsPerClient: 2, MaxConns: 5})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		client string
		want   Reason
	}{
		{"2001:db8:1:2::1", ""},
		{"2001:db8:1:2::2", ""},
		{"2001:db8:1:2:ffff::3", ReasonClientLimit}, // the same /64
		{"2001:db8:1:3::1", ""},                     // another /64
		{"192.0.2.1", ""},
		{"192.0.2.2", ""},
		{"192.0.2.3", ReasonServerLimit}, // five open
	}
	for _, st := range steps {
		if got := s.admit(clientOf(netip.MustParseAddr(st.client))); got != st.want {
			t.Errorf("admit(%s) = %q, want %q", st.client, got, st.want)
		}
	}
	s.release(clientOf(netip.MustParseAddr("2001:db8:1:2::1")))
	if got := s.admit(clientOf(netip.MustParseAddr("2001:db8:1:2::9"))); got != "" {
		t.Errorf("admit after a release = %q, want the leg admitted", got)
	}
	if n := s.Stats().Active; n != 5 {
		t.Errorf("Active = %d, want 5", n)
	}
}
