package netnstest

import (
	"net"
	"testing"
)

func TestMain(m *testing.M) { Main(m) }

// TestIntegrationIsolatedNamespace checks that Main really moved the
// tests into a fresh namespace: only lo, and lo is up.
func TestIntegrationIsolatedNamespace(t *testing.T) {
	RequireIsolatedRoot(t)
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].Name != "lo" {
		t.Fatalf("interfaces = %v, want only lo", ifs)
	}
	if ifs[0].Flags&net.FlagUp == 0 {
		t.Fatal("lo is down")
	}
}
