package agent

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/mcpagent/mcpagent/config"
	"github.com/mcpagent/mcpagent/dhcpopt"
	"github.com/mcpagent/mcpagent/route"
)

// informer asks the ISP's DHCP servers for the MCP list on every uplink
// (mcp.dhcp.source inform), with a DHCPINFORM and an Information-Request
// that leave the system DHCP client's lease alone: when it starts,
// whenever an uplink comes up or its addresses change, and every
// interval. One goroutine per uplink; close stops them and waits.
type informer struct {
	prov     *provisioner
	uplinks  []config.Uplink
	interval time.Duration
	v4Code   uint8
	v6Code   uint16
	log      *slog.Logger
	kicks    []chan struct{} // per uplink, one pending kick at most

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	last []route.UplinkState // as last seen by uplinksChanged
}

func startInformer(cfg *config.Config, prov *provisioner, log *slog.Logger) *informer {
	ctx, cancel := context.WithCancel(context.Background())
	in := &informer{
		prov:     prov,
		uplinks:  cfg.Uplinks,
		interval: time.Duration(cfg.MCP.DHCP.InformInterval),
		v4Code:   cfg.MCP.DHCP.V4Option,
		v6Code:   cfg.MCP.DHCP.V6Option,
		log:      log,
		kicks:    make([]chan struct{}, len(cfg.Uplinks)),
		cancel:   cancel,
		last:     make([]route.UplinkState, len(cfg.Uplinks)),
	}
	for i := range in.uplinks {
		in.kicks[i] = make(chan struct{}, 1)
		in.wg.Add(1)
		go in.informLoop(ctx, i)
	}
	return in
}

// informLoop asks on uplink i after up to firstAskDelay, then on every kick
// and every interval, give or take a fifth at random: gateways that all
// started together when a region's power came back must not keep asking
// the ISP's servers in step.
func (in *informer) informLoop(ctx context.Context, i int) {
	defer in.wg.Done()
	wait := time.NewTimer(rand.N(firstAskDelay))
	defer wait.Stop()
	select {
	case <-ctx.Done():
		return
	case <-wait.C:
	}
	for {
		in.ask(ctx, i)
		wait.Reset(jitter(in.interval))
		select {
		case <-ctx.Done():
			return
		case <-wait.C:
		case <-in.kicks[i]:
			// Reset drops the timer's time if it fired meanwhile (Go 1.23).
		}
	}
}

// firstAskDelay bounds the random delay of the first exchange, as RFC 8415
// does for the first Information-Request (INF_MAX_DELAY).
const firstAskDelay = time.Second

// jitter returns d give or take a fifth, at random.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + rand.N(2*d/5+1)
}

// ask runs one DHCPv4 and one DHCPv6 exchange on uplink i.
func (in *informer) ask(ctx context.Context, i int) {
	ic := dhcpopt.InformConfig{Interface: in.uplinks[i].Interface, V4Code: in.v4Code, V6Code: in.v6Code, Logger: in.log}
	addrs, err := dhcpopt.InformV4(ctx, ic)
	in.prov.informed(i, 4, addrs, err)
	if ctx.Err() != nil {
		return
	}
	addrs, err = dhcpopt.InformV6(ctx, ic)
	in.prov.informed(i, 6, addrs, err)
}

// uplinksChanged asks again on each uplink that is up and came up or
// changed addresses since the last call, and withdraws the lists of each
// uplink that went down. It never blocks; it is a part of
// route.Config.OnChange. A nil informer does nothing.
func (in *informer) uplinksChanged(states []route.UplinkState) {
	if in == nil {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for i, s := range states {
		if i >= len(in.last) {
			break
		}
		old := in.last[i]
		in.last[i] = s
		if old.Up && !s.Up {
			in.prov.uplinkDown(i)
		}
		if s.Up && (!old.Up || !slices.Equal(old.Addrs, s.Addrs)) {
			select {
			case in.kicks[i] <- struct{}{}:
			default: // one is already pending
			}
		}
	}
}

// close stops the exchanges under way and waits for the goroutines.
func (in *informer) close() {
	in.cancel()
	in.wg.Wait()
}
