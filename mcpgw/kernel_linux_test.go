package mcpgw

import (
	"syscall"
	"testing"
)

// TestMaxConnsForFiles lowers the open-file limit and checks the default
// MaxConns that follows from it.
func TestMaxConnsForFiles(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	if orig.Cur < 1064 {
		t.Fatalf("open-file limit %d, below the 1064 this test sets", orig.Cur)
	}
	low := orig
	low.Cur = 1064
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig)
	if n := maxConnsForFiles(0); n != 500 {
		t.Errorf("maxConnsForFiles(0) with 1064 descriptors = %d, want 500", n)
	}
	if n := maxConnsForFiles(256); n != 372 {
		t.Errorf("maxConnsForFiles(256) with 1064 descriptors = %d, want 372", n)
	}
}
