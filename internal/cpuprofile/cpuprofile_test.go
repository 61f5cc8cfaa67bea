package cpuprofile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestStart(t *testing.T) {
	stop, err := Start("")
	if err != nil {
		t.Fatalf("Start(\"\") = %v, want no profile and no error", err)
	}
	stop()
	path := filepath.Join(t.TempDir(), "cpu.prof")
	stop, err = Start(path)
	if !Available {
		if err == nil {
			t.Fatal("a build without -tags profile started a profile")
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Errorf("profile %s: %v, size %v; want a written profile", path, err, fi)
	}
}
