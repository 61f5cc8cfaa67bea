package accept

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	var b Backoff
	var waits []time.Duration
	for range 10 {
		w, ok := b.Failed(emfile)
		if !ok {
			t.Fatalf("Failed(%v) ends the loop", emfile)
		}
		waits = append(waits, w)
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("waits %v, want %v", waits, want)
	}
	b.Succeeded()
	if w, _ := b.Failed(emfile); w != minWait {
		t.Errorf("wait after a success %v, want %v", w, minWait)
	}

	closed := &net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}
	for _, err := range []error{closed, errors.New("not the network's")} {
		if _, ok := b.Failed(err); ok {
			t.Errorf("Failed(%v) retries, want the loop to end", err)
		}
	}
}

func TestSleep(t *testing.T) {
	stop := make(chan struct{})
	if !Sleep(time.Millisecond, stop) {
		t.Error("Sleep reports stop while stop is open")
	}
	close(stop)
	start := time.Now()
	if Sleep(time.Hour, stop) {
		t.Error("Sleep reports the wait passed after stop was closed")
	}
	// A bound far above scheduling noise: the wait is an hour.
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Sleep with stop closed took %v", d)
	}
}
