package control

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
// error, which may come with events.
func LoadDHCP(dir string) ([]DHCPEvent, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
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
			if r, err = DecodeRequest(b); err == nil && stateName(*r.DHCP) != de.Name() {
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
