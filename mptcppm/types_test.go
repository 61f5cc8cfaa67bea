package mptcppm

import "testing"

func TestFlagsString(t *testing.T) {
	for _, tt := range []struct {
		f    Flags
		want string
	}{
		{0, "0"},
		{FlagSignal, "signal"},
		{FlagSubflow | FlagBackup | FlagFullmesh, "subflow|backup|fullmesh"},
		{FlagImplicit | FlagLaminar, "implicit|laminar"},
		{FlagSignal | 0x80 | 0x40, "signal|0xc0"},
	} {
		if got := tt.f.String(); got != tt.want {
			t.Errorf("Flags(%#x).String() = %q, want %q", uint32(tt.f), got, tt.want)
		}
	}
}

func TestEventTypeString(t *testing.T) {
	for _, tt := range []struct {
		t    EventType
		want string
	}{
		{EventCreated, "created"},
		{EventSubEstablished, "sub_established"},
		{EventListenerClosed, "listener_closed"},
		{0, "EventType(0)"},
		{42, "EventType(42)"},
	} {
		if got := tt.t.String(); got != tt.want {
			t.Errorf("EventType(%d).String() = %q, want %q", uint8(tt.t), got, tt.want)
		}
	}
}
