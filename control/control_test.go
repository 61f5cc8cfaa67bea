package control

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDecodeRequest(t *testing.T) {
	long := strings.Repeat("a", MaxOptionHex+1)
	many := `{"dhcp":{"interface":"wan","family":4,"event":"bound","options":{`
	for i := 1; i <= MaxOptions+1; i++ {
		if i > 1 {
			many += ","
		}
		many += `"` + strconv.Itoa(i) + `":"00"`
	}
	many += "}}}"
	tests := []struct {
		name     string
		in       string
		want     Request
		wantLost bool
		wantErr  string // substring; "" means success
	}{
		{name: "udhcpc bound", in: `{"dhcp":{"interface":"wan","family":4,"event":"bound","options":{"224":"C6336401"}}}` + "\n",
			want: Request{DHCP: &DHCPEvent{Interface: "wan", Family: 4, Event: "bound", Options: map[uint16]string{224: "C6336401"}}}},
		{name: "udhcpc deconfig, no newline", in: `{"dhcp":{"interface":"eth0.2","family":4,"event":"deconfig"}}`,
			want: Request{DHCP: &DHCPEvent{Interface: "eth0.2", Family: 4, Event: "deconfig"}}, wantLost: true},
		{name: "odhcp6c updated", in: `{"dhcp":{"interface":"wan","family":6,"event":"updated","options":{"65001":"20010db8000400000000000000000001"}}}`,
			want: Request{DHCP: &DHCPEvent{Interface: "wan", Family: 6, Event: "updated", Options: map[uint16]string{65001: "20010db8000400000000000000000001"}}}},
		{name: "odhcp6c stopped", in: `{"dhcp":{"interface":"wan","family":6,"event":"stopped"}}`,
			want: Request{DHCP: &DHCPEvent{Interface: "wan", Family: 6, Event: "stopped"}}, wantLost: true},
		{name: "empty request", in: `{}`, wantErr: "empty request"},
		{name: "status", in: `{"status":{}}`, want: Request{Status: &StatusRequest{}}},
		{name: "status takes no parameters", in: `{"status":{"verbose":true}}`, wantErr: `unknown field "verbose"`},
		{name: "two requests in one", in: `{"status":{},"dhcp":{"interface":"wan","family":4,"event":"bound"}}`, wantErr: "more than one request"},
		{name: "unknown member", in: `{"reload":{}}`, wantErr: `unknown field "reload"`},
		{name: "unknown event field", in: `{"dhcp":{"interface":"wan","family":4,"event":"bound","lease":1}}`, wantErr: `unknown field "lease"`},
		{name: "trailing data", in: `{"dhcp":{"interface":"wan","family":4,"event":"bound"}} {}`, wantErr: "data after"},
		{name: "two lines", in: "{}\n{}\n", wantErr: "more than one line"},
		{name: "not json", in: "bound wan 224=c6336401\n", wantErr: "decode request"},
		{name: "bad family", in: `{"dhcp":{"interface":"wan","family":5,"event":"bound"}}`, wantErr: "family 5"},
		{name: "udhcpc event for v6", in: `{"dhcp":{"interface":"wan","family":6,"event":"renew"}}`, wantErr: `"renew" is not a DHCPv6 client event`},
		{name: "event the agent does not take", in: `{"dhcp":{"interface":"wan","family":4,"event":"leasefail"}}`, wantErr: "leasefail"},
		{name: "bad interface", in: `{"dhcp":{"interface":"../wan","family":4,"event":"bound"}}`, wantErr: "not an interface name"},
		{name: "v4 code 255", in: `{"dhcp":{"interface":"wan","family":4,"event":"bound","options":{"255":"00"}}}`, wantErr: "no DHCPv4 option code"},
		{name: "code 0", in: `{"dhcp":{"interface":"wan","family":6,"event":"bound","options":{"0":"00"}}}`, wantErr: "no DHCPv6 option code"},
		{name: "code out of range", in: `{"dhcp":{"interface":"wan","family":6,"event":"bound","options":{"65536":"00"}}}`, wantErr: "decode request"},
		{name: "option too long", in: `{"dhcp":{"interface":"wan","family":4,"event":"bound","options":{"224":"` + long + `"}}}`, wantErr: "more than 4096"},
		{name: "too many options", in: many, wantErr: "more than 64"},
		{name: "line too long", in: strings.Repeat(" ", MaxRequest) + "{}", wantErr: "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeRequest([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("DecodeRequest (-want +got):\n%s", diff)
			}
			if got.DHCP != nil && got.DHCP.Lost() != tt.wantLost {
				t.Errorf("Lost() = %v, want %v", got.DHCP.Lost(), tt.wantLost)
			}
			// Round trip: what the client writes decodes to the same.
			b, err := AppendRequest(nil, got)
			if err != nil {
				t.Fatal(err)
			}
			again, err := DecodeRequest(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("round trip (-first +second):\n%s", diff)
			}
		})
	}
}

// FuzzDecodeRequest: DecodeRequest never panics, and what it accepts
// survives AppendRequest and DecodeRequest unchanged.
func FuzzDecodeRequest(f *testing.F) {
	// A udhcpc bound event with the MCP-list option.
	f.Add([]byte(`{"dhcp":{"interface":"wan","family":4,"event":"bound","options":{"224":"C6336401"}}}` + "\n"))
	// An odhcp6c event without options.
	f.Add([]byte(`{"dhcp":{"interface":"wan","family":6,"event":"unbound"}}`))
	// Duplicate keys, of the request and of an option code spelled twice.
	f.Add([]byte(`{"dhcp":{"interface":"a","family":4,"event":"renew","options":{"1":"x","01":"y"}},"dhcp":null}`))
	// Not JSON.
	f.Add([]byte("bound\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := DecodeRequest(in)
		if err != nil {
			return
		}
		b, err := AppendRequest(nil, r)
		if err != nil {
			t.Fatalf("AppendRequest of an accepted request: %v", err)
		}
		again, err := DecodeRequest(b)
		if err != nil {
			t.Fatalf("DecodeRequest of %q: %v", b, err)
		}
		if diff := cmp.Diff(r, again); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

// recorder is a DHCP handler that records events and refuses those on
// interface "lan0".
type recorder struct {
	mu     sync.Mutex
	events []DHCPEvent
}

func (r *recorder) dhcp(e DHCPEvent) error {
	if e.Interface == "lan0" {
		return errors.New("lan0 is a LAN interface")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	return nil
}

func TestServer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	rec := &recorder{}
	s, err := Listen(Config{Path: path, DHCP: rec.dhcp})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with mode 0600", fi.Mode())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".mcpagent-*")); len(left) != 0 {
		t.Errorf("temporary directories left behind: %v", left)
	}

	ctx := context.Background()
	ev := DHCPEvent{Interface: "wan0", Family: 4, Event: "bound", Options: map[uint16]string{224: "c6336401"}}
	if err := Send(ctx, path, Request{DHCP: &ev}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if diff := cmp.Diff([]DHCPEvent{ev}, rec.events); diff != "" {
		t.Errorf("handled events (-want +got):\n%s", diff)
	}

	err = Send(ctx, path, Request{DHCP: &DHCPEvent{Interface: "lan0", Family: 4, Event: "bound"}})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "lan0 is a LAN interface") {
		t.Errorf("Send for lan0: %v, want ErrRefused with the handler's reason", err)
	}

	if err := Send(ctx, path, Request{}); err == nil || errors.Is(err, ErrRefused) {
		t.Errorf("Send of an empty request: %v, want a local error", err)
	}

	// A malformed request gets an answer naming what is wrong.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("{\"dhcp\":{\"interface\":\"wan0\",\"family\":4,\"event\":\"nak\"}}\n"))
	answer, err := readLine(c, MaxResponse)
	c.Close()
	if err != nil || !bytes.Contains(answer, []byte(`"error":"dhcp event: \"nak\" is not a DHCPv4 client event`)) {
		t.Errorf("answer to a malformed request: %q, %v", answer, err)
	}

	// This server takes no status requests.
	if _, err := QueryStatus(ctx, path); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "status requests are not taken") {
		t.Errorf("QueryStatus without a Status handler: %v", err)
	}

	// A second server on a live socket fails and leaves it alone.
	if s2, err := Listen(Config{Path: path}); err == nil {
		s2.Close()
		t.Fatal("a second Listen on a live socket succeeded")
	}
	if err := Send(ctx, path, Request{DHCP: &ev}); err != nil {
		t.Errorf("Send after a failed second Listen: %v", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}
	if err := Send(ctx, path, Request{DHCP: &ev}); err == nil || errors.Is(err, ErrRefused) {
		t.Errorf("Send with no agent: %v, want a local error", err)
	}
}

func TestListenStale(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	// A socket whose listener is gone, as a killed agent leaves it.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	s, err := Listen(Config{Path: stale})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	s.Close()

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := Listen(Config{Path: file}); err == nil {
		s.Close()
		t.Fatal("Listen replaced a regular file")
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Errorf("the regular file was changed: %q", b)
	}
}

func TestSaveLoadDHCP(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if evs, err := LoadDHCP(dir); len(evs) != 0 || err != nil {
		t.Fatalf("LoadDHCP of a missing dir = %v, %v", evs, err)
	}
	bound := DHCPEvent{Interface: "wan0", Family: 4, Event: "bound", Options: map[uint16]string{224: "c6336401"}}
	v6 := DHCPEvent{Interface: "wan0", Family: 6, Event: "informed", Options: map[uint16]string{65001: "20010db8000400000000000000000001"}}
	lte := DHCPEvent{Interface: "wan1", Family: 4, Event: "bound"}
	deconfig := DHCPEvent{Interface: "wan0", Family: 4, Event: "deconfig"}
	for _, e := range []DHCPEvent{bound, v6, lte, deconfig} {
		if err := SaveDHCP(dir, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := SaveDHCP(dir, DHCPEvent{Interface: "wan0", Family: 4, Event: "nak"}); err == nil {
		t.Error("SaveDHCP saved a malformed event")
	}
	// Garbage, and a well-formed event under the wrong name, are skipped.
	os.WriteFile(filepath.Join(dir, "junk"), []byte("{}"), 0o600)
	os.WriteFile(filepath.Join(dir, "wan9.v4"), []byte(`{"dhcp":{"interface":"wan1","family":4,"event":"bound"}}`), 0o600)
	os.WriteFile(filepath.Join(dir, "wan8.v4"), []byte(`{"status":{}}`), 0o600)
	evs, err := LoadDHCP(dir)
	if diff := cmp.Diff([]DHCPEvent{deconfig, v6, lte}, evs); diff != "" {
		t.Errorf("LoadDHCP (-want +got):\n%s", diff)
	}
	if err == nil || !strings.Contains(err.Error(), "junk") || !strings.Contains(err.Error(), "wan9.v4: file name does not match") ||
		!strings.Contains(err.Error(), "wan8.v4: not a DHCP event") {
		t.Errorf("LoadDHCP error = %v, want one naming junk, wan9.v4 and wan8.v4", err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v (%v), want 0700", fi.Mode(), err)
	}
}

// TestStateDirTrust: a state dir that another user could have written, or
// a link, is neither read nor written.
func TestStateDirTrust(t *testing.T) {
	base := t.TempDir()
	ev := DHCPEvent{Interface: "wan0", Family: 4, Event: "bound", Options: map[uint16]string{224: "c6336401"}}
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := SaveDHCP(open, ev); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(open, link); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{open, link} {
		if evs, err := LoadDHCP(dir); len(evs) != 0 || err == nil {
			t.Errorf("LoadDHCP(%s) = %v, %v; want no events and an error", dir, evs, err)
		}
		if err := SaveDHCP(dir, ev); err == nil {
			t.Errorf("SaveDHCP(%s) succeeded", dir)
		}
	}
}

// TestStatus: the status the agent's handler returns reaches the client
// whole, however many connections it lists.
func TestStatus(t *testing.T) {
	want := Status{
		Uplinks: []UplinkStatus{
			{Name: "dsl", Interface: "wan0", Role: "active", Priority: 100, Community: "copper", State: "up", Healthy: true, Use: "active",
				Addrs: []string{"10.0.1.2/24"}, Subflows: 2, RxBytes: 1 << 40, TxBytes: 7},
			{Name: "lte", Interface: "wan1", Role: "on-demand", State: "down", Use: "none", Addrs: []string{}},
		},
		Counters: map[string]uint64{"converted": 3, "fallback": 1},
	}
	for i := range 20000 { // about 4 MB of JSON, far beyond MaxRequest
		want.Connections = append(want.Connections, ConnStatus{
			Client: "192.168.1.2:" + strconv.Itoa(i), Destination: "203.0.113.10:443", MCP: "198.51.100.1:5124", MPTCP: true,
			Subflows: []SubflowStatus{{Local: "10.0.1.2:40000", Remote: "198.51.100.1:5124", Uplink: "dsl"}, {Local: "100.64.0.2:40001", Remote: "198.51.100.1:5124", Uplink: "lte", Backup: true}},
		})
	}
	path := filepath.Join(t.TempDir(), "agent.sock")
	s, err := Listen(Config{Path: path, Status: func() Status { return want }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := QueryStatus(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("QueryStatus (-want +got):\n%s", diff)
	}
}
