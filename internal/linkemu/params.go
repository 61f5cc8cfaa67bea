package linkemu

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// Params are the settings of one link direction. The zero value is a link
// that is up and adds nothing.
type Params struct {
	// Delay is added to every packet's time in the link.
	Delay time.Duration
	// Jitter varies each packet's delay by a uniform random amount in
	// [-Jitter, +Jitter] (never below zero). Packets still leave in the
	// order they came, so a packet never leaves before the one ahead of
	// it and the mean delay grows a little with Jitter.
	Jitter time.Duration
	// Loss is the probability, in [0, 1], that a packet is dropped.
	Loss float64
	// Down drops every packet.
	Down bool
}

// Bounds of Params.
const (
	MaxDelay  = 10 * time.Second // for Delay and Jitter
	maxParams = 256              // bytes of text ParseParams accepts
)

// String formats p as ParseParams reads it, for example
// "delay=10ms jitter=0s loss=0.01 up".
func (p Params) String() string {
	state := "up"
	if p.Down {
		state = "down"
	}
	return fmt.Sprintf("delay=%s jitter=%s loss=%s %s",
		p.Delay, p.Jitter, strconv.FormatFloat(p.Loss, 'g', -1, 64), state)
}

// ParseParams reads settings as space-separated words, each at most once:
// "delay=DURATION", "jitter=DURATION" (Go durations such as 10ms, from 0 to
// MaxDelay), "loss=P" (a probability from 0 to 1), and "up" or "down". A
// setting not named keeps its zero value; empty text is the zero Params.
func ParseParams(s string) (Params, error) {
	var p Params
	if len(s) > maxParams {
		return Params{}, fmt.Errorf("link settings of %d bytes: want at most %d", len(s), maxParams)
	}
	seen := map[string]bool{}
	for _, word := range strings.Fields(s) {
		key, val, hasVal := strings.Cut(word, "=")
		if key == "down" || key == "up" {
			if hasVal {
				return Params{}, fmt.Errorf("link setting %q: %s takes no value", word, key)
			}
			key = "state"
		} else if !hasVal {
			return Params{}, fmt.Errorf("link setting %q: want KEY=VALUE, up or down", word)
		}
		if seen[key] {
			return Params{}, fmt.Errorf("link setting %q: %s given twice", word, key)
		}
		seen[key] = true
		var err error
		switch key {
		case "state":
			p.Down = word == "down"
		case "delay":
			p.Delay, err = parseDelay(val)
		case "jitter":
			p.Jitter, err = parseDelay(val)
		case "loss":
			p.Loss, err = strconv.ParseFloat(val, 64)
			if err == nil && !(p.Loss >= 0 && p.Loss <= 1) { // also catches NaN
				err = errors.New("want a probability from 0 to 1")
			}
		default:
			return Params{}, fmt.Errorf("link setting %q: unknown key %q (want delay, jitter, loss, up or down)", word, key)
		}
		if err != nil {
			return Params{}, fmt.Errorf("link setting %q: %w", word, err)
		}
	}
	return p, nil
}

func parseDelay(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 || d > MaxDelay {
		return 0, fmt.Errorf("want a duration from 0 to %s", MaxDelay)
	}
	return d, nil
}

// scheduler decides each packet's fate. It is not safe for concurrent
// use; the zero value is not usable (see newScheduler).
type scheduler struct {
	rnd  *rand.Rand
	last time.Time // release time of the previous packet
}

func newScheduler(seed uint64) *scheduler {
	return &scheduler{rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// admit returns when a packet that arrives at now under p leaves the link,
// or drop. Release times never decrease, so packets leave in order.
func (s *scheduler) admit(p Params, now time.Time) (release time.Time, drop bool) {
	if p.Down || (p.Loss > 0 && s.rnd.Float64() < p.Loss) {
		return time.Time{}, true
	}
	d := p.Delay
	if p.Jitter > 0 {
		d += time.Duration(s.rnd.Int64N(2*int64(p.Jitter)+1)) - p.Jitter
		if d < 0 {
			d = 0
		}
	}
	release = now.Add(d)
	if release.Before(s.last) {
		release = s.last
	}
	s.last = release
	return release, false
}
