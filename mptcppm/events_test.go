package mptcppm

import (
	"testing"

	"golang.org/x/net/bpf"
)

func TestEventFilter(t *testing.T) {
	// message is a netlink header and a generic netlink header with
	// command cmd, as the kernel sends each event.
	message := func(cmd EventType) []byte {
		b := make([]byte, 20)
		b[0] = 20 // nlmsg_len, host order (little endian here, unread)
		b[16] = byte(cmd)
		b[17] = 1 // version
		return b
	}
	tests := []struct {
		name  string
		types []EventType
		msg   []byte
		pass  bool
	}{
		{"only type, match", []EventType{EventSubClosed}, message(EventSubClosed), true},
		{"only type, other", []EventType{EventSubClosed}, message(EventSubEstablished), false},
		{"only type, created", []EventType{EventSubClosed}, message(EventCreated), false},
		{"first of two", []EventType{EventSubEstablished, EventSubClosed}, message(EventSubEstablished), true},
		{"second of two", []EventType{EventSubEstablished, EventSubClosed}, message(EventSubClosed), true},
		{"none of two", []EventType{EventSubEstablished, EventSubClosed}, message(EventClosed), false},
		{"no command byte", []EventType{EventSubClosed}, message(EventSubClosed)[:16], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := eventFilter(tt.types)
			if err != nil {
				t.Fatal(err)
			}
			prog, ok := bpf.Disassemble(raw)
			if !ok {
				t.Fatalf("filter does not disassemble: %v", raw)
			}
			vm, err := bpf.NewVM(prog)
			if err != nil {
				t.Fatalf("filter rejected by the BPF VM: %v", err)
			}
			n, err := vm.Run(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			if pass := n > 0; pass != tt.pass {
				t.Errorf("filter keeps %d bytes of the message, want pass=%v", n, tt.pass)
			}
			if tt.pass && n < len(tt.msg) {
				t.Errorf("filter truncates the message to %d of %d bytes", n, len(tt.msg))
			}
		})
	}
}

func TestEventFilterTooManyTypes(t *testing.T) {
	types := make([]EventType, 254)
	if _, err := eventFilter(types); err == nil {
		t.Error("a filter of 254 types was built; its jumps cannot reach the end")
	}
}
