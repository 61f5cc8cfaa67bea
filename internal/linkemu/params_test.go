package linkemu

import (
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseParams(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Params
		wantErr bool
	}{
		{name: "empty", in: "", want: Params{}},
		{name: "all", in: "delay=10ms jitter=1ms loss=0.01 down", want: Params{Delay: 10 * time.Millisecond, Jitter: time.Millisecond, Loss: 0.01, Down: true}},
		{name: "any order and spacing", in: "\tloss=1\n up  delay=2s ", want: Params{Delay: 2 * time.Second, Loss: 1}},
		{name: "max delay", in: "delay=10s jitter=10s", want: Params{Delay: MaxDelay, Jitter: MaxDelay}},
		{name: "delay too long", in: "delay=10.001s", wantErr: true},
		{name: "negative jitter", in: "jitter=-1ms", wantErr: true},
		{name: "delay without unit", in: "delay=10", wantErr: true},
		{name: "loss above one", in: "loss=1.5", wantErr: true},
		{name: "negative loss", in: "loss=-0.1", wantErr: true},
		{name: "loss NaN", in: "loss=NaN", wantErr: true},
		{name: "twice", in: "delay=1ms delay=2ms", wantErr: true},
		{name: "up and down", in: "up down", wantErr: true},
		{name: "up with value", in: "up=1", wantErr: true},
		{name: "unknown key", in: "rate=20mbit", wantErr: true},
		{name: "bare word", in: "delay", wantErr: true},
		{name: "too long", in: "delay=1ms" + string(make([]byte, maxParams)), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseParams(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseParams(%q) error = %v, want error %t", tt.in, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseParams(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParamsStringRoundTrip(t *testing.T) {
	for _, p := range []Params{
		{},
		{Delay: 30 * time.Millisecond, Jitter: 1500 * time.Microsecond, Loss: 0.001, Down: true},
		{Delay: MaxDelay, Loss: 1},
	} {
		got, err := ParseParams(p.String())
		if err != nil {
			t.Fatalf("ParseParams(%q): %v", p.String(), err)
		}
		if diff := cmp.Diff(p, got); diff != "" {
			t.Errorf("round trip of %q (-want +got):\n%s", p.String(), diff)
		}
	}
}

// FuzzParseParams checks that ParseParams never panics, that what it
// accepts is within bounds, and that String reads back to the same Params.
func FuzzParseParams(f *testing.F) {
	f.Add("delay=10ms jitter=1ms loss=0.01 up") // every key
	f.Add("down")                               // state only
	f.Add("loss=1e-3 delay=1h")                 // out of bounds delay
	f.Add("delay=1ms delay=1ms")                // repeated key
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseParams(s)
		if err != nil {
			return
		}
		if p.Delay < 0 || p.Delay > MaxDelay || p.Jitter < 0 || p.Jitter > MaxDelay || !(p.Loss >= 0 && p.Loss <= 1) {
			t.Fatalf("ParseParams(%q) = %+v: out of bounds", s, p)
		}
		back, err := ParseParams(p.String())
		if err != nil {
			t.Fatalf("ParseParams(%q) of String: %v", p.String(), err)
		}
		if diff := cmp.Diff(p, back); diff != "" {
			t.Fatalf("round trip of %q (-want +got):\n%s", s, diff)
		}
	})
}

func TestSchedulerOrderAndDelay(t *testing.T) {
	s := newScheduler(7)
	p := Params{Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond}
	start := time.Unix(1000, 0)
	var prev time.Time
	var sum time.Duration
	const n = 10000
	for i := 0; i < n; i++ {
		// Packets 1 ms apart: order often holds one back.
		now := start.Add(time.Duration(i) * time.Millisecond)
		at, drop := s.admit(p, now)
		if drop {
			t.Fatalf("packet %d dropped without loss", i)
		}
		if at.Before(prev) {
			t.Fatalf("packet %d released at %v, before the previous one at %v", i, at, prev)
		}
		if d := at.Sub(now); d < p.Delay-p.Jitter || d > p.Delay+p.Jitter {
			t.Fatalf("packet %d delayed %v, want within %v ± %v", i, d, p.Delay, p.Jitter)
		}
		prev = at
		sum += at.Sub(now)
	}
	// Keeping the order lifts the mean above Delay.
	if mean := sum / n; mean <= p.Delay || mean > p.Delay+p.Jitter {
		t.Errorf("mean delay of packets 1 ms apart %v, want in (%v, %v]", mean, p.Delay, p.Delay+p.Jitter)
	}
	// Packets further apart than the jitter's range are never held back:
	// the mean is Delay (the standard error here is 0.03 ms).
	s = newScheduler(8)
	sum = 0
	for i := 0; i < n; i++ {
		now := start.Add(time.Duration(i) * 2 * p.Jitter)
		at, _ := s.admit(p, now)
		sum += at.Sub(now)
	}
	if mean := sum / n; mean < p.Delay-p.Jitter/20 || mean > p.Delay+p.Jitter/20 {
		t.Errorf("mean delay of sparse packets %v, want %v ± %v", mean, p.Delay, p.Jitter/20)
	}
	// Without jitter a later packet leaves exactly Delay after it came,
	// even right after the settings lowered the delay (order wins).
	s = newScheduler(9)
	s.admit(Params{Delay: time.Second}, start)
	at, _ := s.admit(Params{Delay: time.Millisecond}, start.Add(time.Millisecond))
	if want := start.Add(time.Second); !at.Equal(want) {
		t.Errorf("after lowering the delay: release at %v, want %v (not before the previous packet)", at, want)
	}
}

func TestSchedulerLossAndDown(t *testing.T) {
	tests := []struct {
		name string
		p    Params
		want float64 // fraction dropped
	}{
		{name: "no loss", p: Params{}, want: 0},
		{name: "ten percent", p: Params{Loss: 0.1}, want: 0.1},
		{name: "all lost", p: Params{Loss: 1}, want: 1},
		{name: "down", p: Params{Down: true}, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newScheduler(1)
			const n = 100000
			dropped := 0
			for i := 0; i < n; i++ {
				if _, drop := s.admit(tt.p, time.Unix(0, 0)); drop {
					dropped++
				}
			}
			// 5 standard deviations of a binomial at 0.1: 0.0047.
			if got := float64(dropped) / n; math.Abs(got-tt.want) > 0.005 {
				t.Errorf("dropped %.4f of the packets, want %.4f", got, tt.want)
			}
		})
	}
}
