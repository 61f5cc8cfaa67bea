package control

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestServerOutlivesEMFILE runs the process out of file descriptors while a
// client waits in the control socket's listen queue: the accept loop must
// wait, and answer the client once descriptors are free again.
func TestServerOutlivesEMFILE(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	retries := &acceptRetries{}
	status := func() Status { return Status{Counters: map[string]uint64{"converted": 7}} }
	s, err := Listen(Config{Path: path, Status: status, Logger: slog.New(retries)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The client's socket is made while descriptors are left; it connects
	// once none are.
	client, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	clientFile := os.NewFile(uintptr(client), "client")
	defer clientFile.Close()

	fillers := exhaustDescriptors(t)
	if err := unix.Connect(client, &unix.SockaddrUnix{Name: path}); err != nil {
		closeAll(fillers)
		t.Fatalf("connect with no descriptors left: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for retries.n.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	closeAll(fillers)
	if n := retries.n.Load(); n < 2 {
		t.Fatalf("%d failed accepts logged while out of descriptors, want at least 2", n)
	}

	c, err := net.FileConn(clientFile)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req, err := AppendRequest(nil, Request{Status: &StatusRequest{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	line, err := readLine(c, MaxResponse)
	if err != nil {
		t.Fatalf("no answer to the client that waited: %v", err)
	}
	var resp Response
	if err := decodeLine(line, &resp, MaxResponse); err != nil {
		t.Fatal(err)
	}
	if resp.Status == nil || resp.Status.Counters["converted"] != 7 {
		t.Errorf("answer %q, want the status", line)
	}
	// The loop still serves new clients.
	if _, err := QueryStatus(context.Background(), path); err != nil {
		t.Errorf("QueryStatus after the descriptors came back: %v", err)
	}
}

// exhaustDescriptors lowers the process's open-file limit to a little above
// the descriptors in use, restored when t ends, and opens /dev/null until
// none is left. It returns the descriptors it opened.
func exhaustDescriptors(t *testing.T) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	highest := 0
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil {
			highest = max(highest, fd)
		}
	}
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	low := orig
	low.Cur = min(orig.Cur, uint64(highest)+64)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
			t.Errorf("restore the open-file limit: %v", err)
		}
	})
	var fds []int
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == unix.EMFILE {
			return fds
		}
		if err != nil {
			closeAll(fds)
			t.Fatalf("open /dev/null: %v", err)
		}
		fds = append(fds, fd)
	}
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// acceptRetries is a slog.Handler that counts the accept loop's retries.
type acceptRetries struct{ n atomic.Int64 }

func (h *acceptRetries) Enabled(context.Context, slog.Level) bool { return true }
func (h *acceptRetries) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "control socket accept" && r.Level == slog.LevelWarn {
		h.n.Add(1)
	}
	return nil
}
func (h *acceptRetries) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *acceptRetries) WithGroup(string) slog.Handler      { return h }
