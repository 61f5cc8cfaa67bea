package control

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
)

// MaxRequest bounds the size of one request line, newline included.
const MaxRequest = 64 << 10

// Limits of a DHCPEvent. MaxOptions is far more than a DHCP client hands
// its hook; MaxOptionHex holds the hex form of any DHCPv4 option, and of
// any DHCPv6 option that fits an Ethernet frame.
const (
	MaxOptions   = 64
	MaxOptionHex = 4096
)

// Request is one request to the agent. Exactly one member is set.
type Request struct {
	// DHCP hands the agent what a DHCP client told its hook script.
	DHCP *DHCPEvent `json:"dhcp,omitempty"`
	// Status asks for the agent's Status.
	Status *StatusRequest `json:"status,omitempty"`
}

// Response is the agent's answer to a Request.
type Response struct {
	// Error is why the agent refused the request; empty when it was
	// done.
	Error string `json:"error,omitempty"`
	// Status answers a StatusRequest.
	Status *Status `json:"status,omitempty"`
}

// DHCPEvent is one call of a DHCP client's hook script.
type DHCPEvent struct {
	// Interface is the Linux device the client runs on (udhcpc's
	// $interface, odhcp6c's first argument).
	Interface string `json:"interface"`
	// Family is 4 (udhcpc) or 6 (odhcp6c).
	Family int `json:"family"`
	// Event is the client's event: for udhcpc bound, renew or deconfig;
	// for odhcp6c bound, informed, updated, rebound, unbound or stopped.
	Event string `json:"event"`
	// Options are the options the client handed its hook as optN=HEX
	// (udhcpc) or OPTION_N=HEX (odhcp6c): code → value, as it was.
	Options map[uint16]string `json:"options,omitempty"`
}

// events lists the events a DHCPEvent may carry, per family, and whether
// each means that the client lost its configuration.
var events = map[int]map[string]bool{
	4: {"bound": false, "renew": false, "deconfig": true},
	6: {"bound": false, "informed": false, "updated": false, "rebound": false, "unbound": true, "stopped": true},
}

// Lost reports whether e says that the client has no configuration any
// more (udhcpc's deconfig, odhcp6c's unbound and stopped): whatever its
// options said before is void. Any other valid event carries the client's
// current options.
func (e DHCPEvent) Lost() bool { return events[e.Family][e.Event] }

// ifNameRE matches a Linux interface name.
var ifNameRE = regexp.MustCompile(`^[A-Za-z0-9_.@-]{1,15}$`)

// Check reports why e is not a well-formed event, or returns nil. It does
// not look into option values beyond their length.
func (e DHCPEvent) Check() error {
	if !ifNameRE.MatchString(e.Interface) {
		return fmt.Errorf("dhcp event: %q is not an interface name", e.Interface)
	}
	evs, ok := events[e.Family]
	if !ok {
		return fmt.Errorf("dhcp event: family %d is neither 4 nor 6", e.Family)
	}
	if _, ok := evs[e.Event]; !ok {
		return fmt.Errorf("dhcp event: %q is not a DHCPv%d client event the agent takes", e.Event, e.Family)
	}
	if len(e.Options) > MaxOptions {
		return fmt.Errorf("dhcp event: %d options, more than %d", len(e.Options), MaxOptions)
	}
	for code, v := range e.Options {
		if code == 0 || e.Family == 4 && code > 254 {
			return fmt.Errorf("dhcp event: %d is no DHCPv%d option code", code, e.Family)
		}
		if len(v) > MaxOptionHex {
			return fmt.Errorf("dhcp event: option %d is %d characters long, more than %d", code, len(v), MaxOptionHex)
		}
	}
	return nil
}

// check reports why r is not a well-formed request.
func (r Request) check() error {
	switch {
	case r.DHCP != nil && r.Status != nil:
		return errors.New("more than one request")
	case r.DHCP != nil:
		return r.DHCP.Check()
	case r.Status != nil:
		return nil
	}
	return errors.New("empty request")
}

// AppendRequest appends the wire form of r, one line of JSON, to b. It
// fails for a request that DecodeRequest would refuse.
func AppendRequest(b []byte, r Request) ([]byte, error) {
	if err := r.check(); err != nil {
		return b, err
	}
	return appendLine(b, r, MaxRequest)
}

// DecodeRequest reads one request line. It refuses, with an error, a line
// longer than MaxRequest, unknown members, trailing data and malformed
// requests.
func DecodeRequest(line []byte) (Request, error) {
	var r Request
	if err := decodeLine(line, &r, MaxRequest); err != nil {
		return Request{}, fmt.Errorf("decode request: %w", err)
	}
	if err := r.check(); err != nil {
		return Request{}, err
	}
	return r, nil
}

// appendLine appends v as one line of JSON of at most limit bytes.
func appendLine(b []byte, v any, limit int) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return b, err
	}
	if len(j)+1 > limit {
		return b, fmt.Errorf("message of %d bytes is longer than %d", len(j)+1, limit)
	}
	return append(append(b, j...), '\n'), nil
}

// decodeLine decodes one JSON value, strictly, from a line of at most
// limit bytes that may end with a newline.
func decodeLine(line []byte, v any, limit int) error {
	if len(line) > limit {
		return fmt.Errorf("longer than %d bytes", limit)
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	if bytes.IndexByte(line, '\n') >= 0 {
		return errors.New("more than one line")
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON object")
	}
	return nil
}

// readLine reads one line of at most limit bytes, newline included.
func readLine(r io.Reader, limit int) ([]byte, error) {
	line, err := bufio.NewReaderSize(r, limit).ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, fmt.Errorf("line longer than %d bytes", limit)
	}
	return line, err
}
