package control

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// A DHCP client's hook may run while the agent is not (at boot the
// network comes up before the agent starts, and a lease lasts hours), so
// the client side also keeps the latest event of each DHCP client in a
// state directory, and the agent replays them when it starts.

// DHCPStateDir returns the state directory that goes with the control
// socket at socketPath: the same path with ".dhcp" added.
func DHCPStateDir(socketPath string) string { return socketPath + ".dhcp" }

// SaveDHCP records e as the latest event of its client (interface and
// family) in dir, creating dir with mode 0700 if needed. The file is
// replaced atomically.
func SaveDHCP(dir string, e DHCPEvent) error {
	b, err := AppendRequest(nil, Request{DHCP: &e})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save dhcp event: %w", err)
	}
	if err := checkStateDir(dir); err != nil {
		return fmt.Errorf("save dhcp event: %w", err)
	}
	name := filepath.Join(dir, stateName(e))
	tmp, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("save dhcp event: %w", err)
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), name)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save dhcp event: %w", err)
	}
	return nil
}

// LoadDHCP returns the events that SaveDHCP recorded in dir, one per
// client, in the order of their file names. A missing dir holds none.
// Files that are not well-formed events are skipped and reported in the
// error, which may come with events. A dir that another user could have
// written (see checkStateDir) yields an error and no events.
func LoadDHCP(dir string) ([]DHCPEvent, error) {
	err := checkStateDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load dhcp events: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load dhcp events: %w", err)
	}
	var (
		evs  []DHCPEvent
		errs []error
	)
	for _, de := range entries {
		if !de.Type().IsRegular() || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		b, err := readSmall(filepath.Join(dir, de.Name()))
		if err == nil {
			var r Request
			r, err = DecodeRequest(b)
			switch {
			case err != nil:
			case r.DHCP == nil:
				err = errors.New("not a DHCP event")
			case stateName(*r.DHCP) != de.Name():
				err = errors.New("file name does not match the event")
			}
			if err == nil {
				evs = append(evs, *r.DHCP)
				continue
			}
		}
		errs = append(errs, fmt.Errorf("dhcp event %s: %w", de.Name(), err))
	}
	return evs, errors.Join(errs...)
}

// checkStateDir reports whether dir is a directory (not a link to one)
// that only this process's user could have written: its events decide
// where the household's traffic goes. A dir in a world-writable place such
// as /tmp could have been made by another user before the first event.
func checkStateDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("state dir %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state dir %s has mode %v: others could write it", dir, fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("state dir %s belongs to user %d, not to this process's (%d)", dir, st.Uid, os.Geteuid())
	}
	return nil
}

// stateName is the file name of e's client: wan0.v4.
func stateName(e DHCPEvent) string { return e.Interface + ".v" + strconv.Itoa(e.Family) }

// readSmall reads a file of at most MaxRequest bytes.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxRequest+1))
	if err == nil && len(b) > MaxRequest {
		err = fmt.Errorf("longer than %d bytes", MaxRequest)
	}
	return b, err
}
