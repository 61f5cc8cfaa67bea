package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mcpagent/mcpagent/internal/testbed"
)

// Addresses of the testbed (scripts/testbed.sh).
const (
	serverV4  = "203.0.113.10"
	mcpAddr   = "198.51.100.1"
	iperfPort = "5201"
	httpAddr  = serverV4 + ":8080"
	echoAddr  = serverV4 + ":9000"
	// capEchoAddr serves the stepped connection figure alone, so that the
	// sockets other figures left in TIME_WAIT cannot collide with its
	// connections.
	capEchoAddr = serverV4 + ":9001"
	cpeDSLAddr  = "10.0.1.2"
	cpeLTEAddr  = "100.64.0.2"
)

// options are the command line's settings.
type options struct {
	out       string
	reps      int
	dsl, lte  link
	systems   []string
	phases    []string
	gb        int
	connRate  int
	connFor   time.Duration
	ttfbN     int
	bulkFor   time.Duration
	manyConns int // idle relayed connections of the second RSS figure
	command   string
}

// link is an access link profile: "RATE,DELAY", e.g. "20mbit,10ms".
type link struct {
	rate  string // tc rate
	bps   float64
	delay time.Duration
}

func (l *link) String() string { return l.rate + "," + l.delay.String() }

func (l *link) Set(s string) error {
	rate, delay, ok := strings.Cut(s, ",")
	num := strings.TrimSuffix(rate, "mbit")
	mbit, err := strconv.Atoi(num) // testbed.sh takes whole numbers
	if !ok || num == rate || err != nil || mbit <= 0 {
		return fmt.Errorf("link %q: want RATEmbit,DELAY such as 20mbit,10ms", s)
	}
	d, err := time.ParseDuration(delay)
	if err != nil || d < 0 {
		return fmt.Errorf("link %q: bad delay", s)
	}
	*l = link{rate: rate, bps: float64(mbit) * 1e6, delay: d}
	return nil
}

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "hold" || os.Args[1] == "connrate" || os.Args[1] == "echo" || os.Args[1] == "ctflush") {
		subcommand(os.Args[1], os.Args[2:])
	}
	o := options{dsl: link{"20mbit", 20e6, 10 * time.Millisecond}, lte: link{"40mbit", 40e6, 30 * time.Millisecond}, manyConns: 10000}
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	fs.StringVar(&o.out, "out", "bench", "write results.json and results.md to `DIR`")
	fs.IntVar(&o.reps, "reps", 3, "runs of every figure")
	fs.Var(&o.dsl, "dsl", "DSL link `RATE,DELAY` (one-way delay)")
	fs.Var(&o.lte, "lte", "LTE link `RATE,DELAY` (one-way delay)")
	systems := fs.String("systems", "a,b,c,d", "systems to compare")
	phases := fs.String("phases", "shaped,unshaped", "shaped: goodput and TTFB; unshaped: CPU, memory, connection rate")
	fs.IntVar(&o.gb, "gb", 2, "GB relayed for the CPU figure")
	fs.IntVar(&o.connRate, "conn-rate", 5000, "new connections a second offered")
	fs.DurationVar(&o.connFor, "conn-for", 3*time.Second, "how long the connection rate is offered")
	fs.IntVar(&o.ttfbN, "ttfb-requests", 200, "HTTP requests per TTFB run")
	fs.DurationVar(&o.bulkFor, "bulk-for", 4*time.Second, "duration of a goodput run (after 1 s omitted)")
	fs.StringVar(&o.command, "command", "", "the command line to record (default: this one)")
	fs.Parse(os.Args[1:])
	o.systems = strings.Split(*systems, ",")
	o.phases = strings.Split(*phases, ",")
	if o.command == "" {
		o.command = strings.Join(os.Args, " ")
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// wantNoFile is the open-file limit the benchmark asks for: room for 10,000
// idle relayed connections, two descriptors each, and the rest.
const wantNoFile = 32768

func run(o options) error {
	start := time.Now()
	// Idle relayed connections take two descriptors each in the router's
	// process; children inherit the limit.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read the open-file limit: %w", err)
	}
	// As root the hard limit can rise too: 10,000 relayed connections
	// take 20,000 descriptors in the router's process.
	want := syscall.Rlimit{Cur: max(lim.Max, wantNoFile), Max: max(lim.Max, wantNoFile)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		lim = want
	} else {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raise the open-file limit: %w", err)
		}
	}
	if most := int(lim.Max-500) / 2 / 1000 * 1000; most < o.manyConns {
		o.manyConns = most
		fmt.Fprintf(os.Stderr, "bench: the open-file limit %d allows %d idle relayed connections, not 10,000\n", lim.Max, most)
	}
	dir, err := os.MkdirTemp("", "mcpagent-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	res := &Results{
		Command: o.command,
		Date:    start.UTC().Format(time.RFC3339),
		Machine: machine(),
		Kernel:  strings.TrimSpace(output("uname", "-srvm")),
		Go:      runtime.Version(),
		// The revision measured; "-dirty" marks uncommitted changes.
		Revision: strings.TrimSpace(output("git", "describe", "--always", "--dirty")),
		Reps:     o.reps,
		Links:    map[string]string{"dsl": fmt.Sprintf("%s, %s one-way", o.dsl.rate, o.dsl.delay), "lte": fmt.Sprintf("%s, %s one-way", o.lte.rate, o.lte.delay)},
		Setup: []string{
			"every namespace: sysctl net.ipv4.ip_local_port_range=\"" + portRange + "\" net.ipv4.tcp_tw_reuse=1 (so repeated runs of thousands of connections do not run out of ports; the range stays above the services' ports)",
			fmt.Sprintf("RLIMIT_NOFILE %d for every process (the many-connections figure uses %d connections, at most (limit − 500) / 2)", lim.Max, o.manyConns),
			"servers on srv: `iperf3 -s`, `testserver -http " + httpAddr + "` (a 10 KB file), and for each system afresh `bench echo " + echoAddr + "` (one descriptor per connection)",
			"goodput, TTFB: testbed with the link profiles above; CPU, RSS and connection rate: a second testbed with both links unshaped and no emulator",
			"before each system starts, the router's connection-tracking table is flushed (`bench ctflush`): the NAT and redirect bindings of the previous system's connections would otherwise catch connections that reuse their 4-tuples",
			fmt.Sprintf("then the harness waits until the machine is quiet (under %.0f %% busy over %v, for at most %v): the kernel goes on closing the previous system's connections for seconds, and the next system would pay for it", 100*quietBusy, quietWindow, quietTimeout),
		},
	}
	env := &bench{o: o, res: res, dir: dir, self: self, stop: make(chan os.Signal, 1)}
	signal.Notify(env.stop, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(env.stop)
	log := os.Stderr
	root := newRunner("bench", dir, log)
	if msg := root.run(func() {
		env.agentBin = testbed.BuildBinary(root, "./cmd/mcpagent")
		env.gwBin = testbed.BuildBinary(root, "./cmd/mcpgw")
		env.serverBin = testbed.BuildBinary(root, "./internal/cmd/testserver")
	}); msg != "" {
		return fmt.Errorf("build: %s", msg)
	}
	for _, id := range o.systems {
		s := systemByID(id)
		if s == nil {
			return fmt.Errorf("unknown system %q (want a, b, c or d)", id)
		}
		env.systems = append(env.systems, s)
		res.Systems = append(res.Systems, System{ID: s.id, Name: s.name, Commands: s.commands(env)})
	}
	for _, phase := range []struct {
		name string
		f    func(*runner)
	}{{"shaped", env.shapedPhase}, {"unshaped", env.unshapedPhase}} {
		if !slices.Contains(o.phases, phase.name) {
			continue
		}
		r := newRunner(phase.name, dir, log)
		phaseStart := time.Now()
		if msg := r.run(func() { phase.f(r) }); msg != "" {
			fmt.Fprintf(log, "bench: %s phase stopped: %s\n", phase.name, msg)
		}
		// Where the time goes, against the 15 minutes make bench must keep to.
		fmt.Fprintf(log, "bench: %s phase took %v\n", phase.name, time.Since(phaseStart).Round(time.Second))
	}
	res.Duration = time.Since(start).Round(time.Second).String()
	res.summarize()
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	for name, write := range map[string]func(io.Writer) error{"results.json": res.writeJSON, "results.md": res.writeMarkdown} {
		f, err := os.Create(filepath.Join(o.out, name))
		if err != nil {
			return err
		}
		if err := write(f); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", name, err)
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	fmt.Fprintf(log, "bench: wrote %s/results.md and results.json in %s\n", o.out, res.Duration)
	return nil
}

// portRange is the ephemeral port range of every namespace: wider than
// the default, and above every port a service of the run listens on, or a
// connection one system left in TIME_WAIT could hold the next system's
// listening port.
const portRange = "20000 65535"

// bench is the state of one run.
type bench struct {
	o                          options
	res                        *Results
	dir, self                  string
	agentBin, gwBin, serverBin string
	systems                    []*system
	stop                       chan os.Signal // SIGINT or SIGTERM: finish early
}

// stopped reports whether the run was asked to end; the measurements
// then stop after the current one, and the results so far are written.
func (b *bench) stopped() bool {
	select {
	case sig := <-b.stop:
		b.stop <- sig // stay stopped
		return true
	default:
		return false
	}
}

// prepare sets the common sysctls and starts the servers on srv.
func (b *bench) prepare(r *runner, tb *testbed.Testbed) {
	for _, n := range []string{"lan", "cpe", "cgn", "core", "mcp", "srv"} {
		tb.Run(r, n, "sysctl", "-qw", "net.ipv4.ip_local_port_range="+portRange, "net.ipv4.tcp_tw_reuse=1")
	}
	www := r.TempDir()
	path, _ := testbed.MakeFile(r, www, 10<<10)
	if err := os.Rename(path, filepath.Join(www, "10k.bin")); err != nil {
		r.Fatal(err)
	}
	tb.Start(r, "srv", "iperf3.log", "", "iperf3", "-s", "-B", serverV4, "-p", iperfPort)
	waitListening(r, tb, "srv", iperfPort)
	tb.Start(r, "srv", "testserver.log", "listening", b.serverBin, "-dir", www, "-http", httpAddr)
}

// measure runs f for each repetition and system (the systems interleaved,
// so that a change in the machine's load hits them alike), each with
// the system started afresh.
func (b *bench) measure(r *runner, tb *testbed.Testbed, f func(sr *runner, s *system, p *proc, rep int)) {
	for rep := 0; rep < b.o.reps; rep++ {
		for _, s := range b.systems {
			if b.stopped() {
				return
			}
			sr := newRunner(fmt.Sprintf("%s rep %d system %s", r.name, rep+1, s.id), b.dir, r.log)
			start := time.Now()
			var quiet time.Duration
			if msg := sr.run(func() {
				// The router's connection tracking forgets the last
				// system's connections: its NAT and redirect bindings
				// would catch this one's that reuse a 4-tuple.
				if out, err := tb.Command(context.Background(), "cpe", b.self, "ctflush").CombinedOutput(); err != nil {
					sr.Fatalf("%v: %s", err, out)
				}
				quietStart := time.Now()
				if err := waitQuiet(); err != nil {
					fmt.Fprintf(r.log, "bench: %s: %v\n", sr.name, err)
				}
				quiet = time.Since(quietStart)
				p := s.start(sr, tb, b)
				errs := b.res.errors()
				f(sr, s, p, rep)
				if b.res.errors() > errs {
					sr.Fail() // the logs of sr's processes are shown
				}
			}); msg != "" {
				fmt.Fprintf(r.log, "bench: %s: %s\n", sr.name, msg)
			}
			fmt.Fprintf(r.log, "bench: %s took %v, %v of it waiting for a quiet machine\n",
				sr.name, time.Since(start).Round(100*time.Millisecond), quiet.Round(100*time.Millisecond))
		}
	}
}

// shapedPhase measures goodput and TTFB on the emulated links.
func (b *bench) shapedPhase(r *runner) {
	o := b.o
	tb := testbed.Up(r, testbed.Options{DSLRate: o.dsl.rate, LTERate: o.lte.rate, Emulate: true,
		DSLLink: "delay=" + o.dsl.delay.String(), LTELink: "delay=" + o.lte.delay.String()})
	b.prepare(r, tb)
	sum := o.dsl.bps + o.lte.bps
	secs := strconv.Itoa(int(o.bulkFor.Seconds()))
	url := "http://" + httpAddr + "/10k.bin"
	ttfbScript := fmt.Sprintf(`for i in $(seq %d); do curl -s -o /dev/null -w '%%{time_starttransfer}\n' %s; done`, o.ttfbN, url)
	b.measure(r, tb, func(sr *runner, s *system, _ *proc, rep int) {
		for _, flows := range []int{1, 8} {
			args := []string{"-c", serverV4, "-p", iperfPort, "-R", "-O", "1", "-t", secs, "-P", strconv.Itoa(flows), "-J"}
			key := figGoodput1
			if flows == 8 {
				key = figGoodput8
			}
			bps, _, err := iperf(tb, args)
			b.res.add(key, s.id, "of link sum", "lan: iperf3 "+strings.Join(args, " "), bps/sum, err)
		}
		p50, p95, err := ttfb(tb, ttfbScript, o.ttfbN)
		cmd := "lan: sh -c \"" + ttfbScript + "\""
		b.res.add(figTTFB50, s.id, "ms", cmd, p50, err)
		b.res.add(figTTFB95, s.id, "ms", cmd, p95, err)
	})
}

// unshapedPhase measures CPU, memory and connection setup on links
// without rate limits or emulator. The connection-rate runs come after
// all the others: the thousands of connections they leave closing must not
// weigh on another system's CPU or memory figures.
func (b *bench) unshapedPhase(r *runner) {
	o := b.o
	tb := testbed.Up(r, testbed.Options{DSLRate: "0", LTERate: "0"})
	b.prepare(r, tb)
	b.measure(r, tb, func(sr *runner, s *system, p *proc, rep int) {
		if p == nil {
			return
		}
		// A fresh echo server for each system: what one system left
		// behind must not hold up the next.
		tb.Start(sr, "srv", "echo.log", "listening", b.self, "echo", echoAddr)
		args := []string{"-c", serverV4, "-p", iperfPort, "-R", "-n", strconv.Itoa(o.gb) + "G", "-J"}
		before, err := p.cpu()
		var perGB float64
		if err == nil {
			var bytes float64
			_, bytes, err = iperf(tb, args)
			after, err2 := p.cpu()
			if err == nil {
				err = err2
			}
			perGB = (after - before) / (bytes / 1e9)
		}
		b.res.add(figCPUPerGB, s.id, "s/GB", "lan: iperf3 "+strings.Join(args, " ")+"; utime+stime of the router's process from /proc/PID/stat", perGB, err)
		b.rss(sr, tb, s, p)
	})
	directP99 := map[int]float64{}
	b.measure(r, tb, func(sr *runner, s *system, p *proc, rep int) {
		tb.Start(sr, "srv", "echo.log", "listening", b.self, "echo", echoAddr)
		// The stepped figure first, on an echo server of its own: the
		// sockets earlier figures left in TIME_WAIT would collide with
		// its few connections.
		tb.Start(sr, "srv", "echo-cap.log", "listening", b.self, "echo", capEchoAddr)
		capacity, ccmd, cpu, err := b.connCapacity(tb, p)
		b.res.add(figConnCapacity, s.id, "/s", ccmd, capacity, err)
		if p != nil {
			b.res.add(figConnCPU, s.id, "s", cpu.cmd, cpu.per1k, cpu.err)
		}
		args := []string{"connrate", echoAddr, strconv.Itoa(o.connRate), o.connFor.String()}
		cr, err := b.connRate(tb, args)
		cmd := "lan: bench " + strings.Join(args, " ")
		var rate float64
		if err == nil {
			rate = float64(cr.Succeeded) / cr.Seconds
			if cr.Succeeded < cr.Offered {
				fmt.Fprintf(r.log, "bench: %s: %d of %d connections failed, first: %s\n", sr.name, cr.Offered-cr.Succeeded, cr.Offered, cr.FirstErr)
			}
		}
		b.res.add(figConnRate, s.id, "/s", cmd, rate, err)
		b.res.add(figConnP99, s.id, "ms", cmd, cr.P99, err)
		if s.id == "a" && err == nil {
			directP99[rep] = cr.P99
		} else if d, ok := directP99[rep]; ok && s.id != "a" {
			b.res.add(figConnAddedP99, s.id, "ms", cmd+"; minus the p99 of (a) in the same repetition", cr.P99-d, err)
		}
	})
}

// capacitySteps are the offered rates connCapacity tries, in order.
var capacitySteps = []int{250, 500, 1000, 1500, 2000, 3000, 4000, 5000}

// connCapacity offers rising connection rates, 2 s each, and returns the
// highest at which every connection was set up with a setup p99 of at most
// 5 ms: what the system sustains before connections start to queue. An
// open loop beyond that rate only measures the queue, so the figure at
// -conn-rate says less about a system than where it stops keeping up.
// With the router's process p (nil for the direct path) it also returns
// what p's CPU time was per 1,000 connections at the step of cpuStepRate.
func (b *bench) connCapacity(tb *testbed.Testbed, p *proc) (float64, string, connCPU, error) {
	const step, bound = 2 * time.Second, 5.0
	cmd := fmt.Sprintf("lan: bench connrate %s R %v, for R in %v until one fails or its p99 exceeds %v ms", capEchoAddr, step, capacitySteps, bound)
	cpu := connCPU{
		cmd: fmt.Sprintf("lan: bench connrate %s %d %v; utime+stime of the router's process from /proc/PID/stat", capEchoAddr, cpuStepRate, step),
		err: fmt.Errorf("the steps ended below %d/s", cpuStepRate),
	}
	best := 0
	var why string // what ended the steps, for a first step that fails
	for _, rate := range capacitySteps {
		if rate > b.o.connRate {
			break
		}
		var before float64
		var cpuErr error
		if p != nil && rate == cpuStepRate {
			before, cpuErr = p.cpu()
		}
		cr, err := b.connRate(tb, []string{"connrate", capEchoAddr, strconv.Itoa(rate), step.String()})
		if err != nil {
			why = err.Error()
			break
		}
		if p != nil && rate == cpuStepRate {
			after, err := p.cpu()
			cpu.err = errors.Join(cpuErr, err)
			cpu.per1k = (after - before) / float64(cr.Succeeded) * 1000
		}
		if cr.Succeeded < cr.Offered || cr.P99 > bound {
			why = fmt.Sprintf("%d of %d set up, p50 %.2f ms, p99 %.2f ms", cr.Succeeded, cr.Offered, cr.P50, cr.P99)
			if cr.FirstErr != "" {
				why += ", first error: " + cr.FirstErr
			}
			break
		}
		best = rate
		// Let the sockets of this step close before the next.
		time.Sleep(time.Second)
	}
	if best == 0 {
		return 0, cmd, cpu, fmt.Errorf("not even %d/s with p99 ≤ %v ms (%s)", capacitySteps[0], bound, why)
	}
	return float64(best), cmd, cpu, nil
}

// cpuStepRate is the step of connCapacity at which the router's CPU time
// per connection is taken: a rate every compared system sustains on the
// benchmark machine, so that the figure counts work done, not queueing.
const cpuStepRate = 500

// connCPU is the router's CPU time per 1,000 connections, the command that
// measured it, and why there is none.
type connCPU struct {
	per1k float64
	cmd   string
	err   error
}

// rss measures the router process's resident memory idle, with 1,000 and
// with many (10,000 unless the open-file limit forbids) idle relayed
// connections: 1,000 held, then the rest added.
func (b *bench) rss(r *runner, tb *testbed.Testbed, s *system, p *proc) {
	many := b.o.manyConns
	cmd := fmt.Sprintf("lan: bench hold %s N (N = 1000, then %d more); VmRSS of the router's process from /proc/PID/status", echoAddr, many-1000)
	time.Sleep(time.Second)
	idle, err := p.rss()
	b.res.add(figRSSIdle, s.id, "MB", cmd, idle, err)
	if err != nil {
		return
	}
	h1, err := b.hold(r, tb, 1000)
	if err != nil {
		b.res.add(figRSS1k, s.id, "MB", cmd, 0, err)
		return
	}
	defer h1.close()
	time.Sleep(time.Second)
	v1, err := p.rss()
	b.res.add(figRSS1k, s.id, "MB", cmd, v1, err)
	b.res.add(figRSSGrowth1k, s.id, "MB", cmd, v1-idle, err)
	h2, err := b.hold(r, tb, many-1000)
	if err != nil {
		b.res.add(figRSSMany, s.id, "MB", cmd, 0, err)
		return
	}
	defer h2.close()
	time.Sleep(time.Second)
	v, err := p.rss()
	b.res.add(figRSSMany, s.id, "MB", cmd, v, err)
	b.res.add(figRSSGrowthMany, s.id, "MB", cmd, (v-idle)/float64(many/1000), err)
}

// holder is a running "bench hold".
type holder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

func (h *holder) close() {
	h.stdin.Close()
	h.cmd.Wait()
}

func (b *bench) hold(r *runner, tb *testbed.Testbed, n int) (*holder, error) {
	cmd := tb.Command(context.Background(), "lan", b.self, "hold", echoAddr, strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &holder{cmd: cmd, stdin: stdin}
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- l
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-line:
		if strings.HasPrefix(l, "held ") {
			return h, nil
		}
		h.close()
		return nil, fmt.Errorf("hold %d: %s", n, strings.TrimSpace(stderr.String()))
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		h.close()
		return nil, fmt.Errorf("hold %d: not held within 2 minutes", n)
	}
}

func (b *bench) connRate(tb *testbed.Testbed, args []string) (connRateResult, error) {
	var cr connRateResult
	out, err := runIn(tb, "lan", 2*time.Minute, b.self, args...)
	if err != nil {
		return cr, err
	}
	if err := json.Unmarshal(out, &cr); err != nil {
		return cr, fmt.Errorf("connrate output: %w", err)
	}
	if cr.Succeeded == 0 {
		return cr, fmt.Errorf("no connection succeeded: %s", cr.FirstErr)
	}
	return cr, nil
}

// iperf runs iperf3 on the LAN host and returns the received bit rate and
// bytes.
func iperf(tb *testbed.Testbed, args []string) (bps, bytes float64, err error) {
	out, err := runIn(tb, "lan", 3*time.Minute, "iperf3", args...)
	var v struct {
		End struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &v); jerr != nil {
		if err == nil {
			err = fmt.Errorf("iperf3 output: %w", jerr)
		}
		return 0, 0, err
	}
	if v.Error != "" {
		return 0, 0, fmt.Errorf("iperf3: %s", v.Error)
	}
	if err != nil {
		return 0, 0, err
	}
	return v.End.SumReceived.BitsPerSecond, v.End.SumReceived.Bytes, nil
}

// ttfb runs the curl loop and returns the p50 and p95 of its times to
// first byte in ms.
func ttfb(tb *testbed.Testbed, script string, n int) (p50, p95 float64, err error) {
	out, err := runIn(tb, "lan", 5*time.Minute, "sh", "-c", script)
	if err != nil {
		return 0, 0, err
	}
	var v []float64
	for _, f := range strings.Fields(string(out)) {
		s, err := strconv.ParseFloat(f, 64)
		if err != nil || s <= 0 {
			return 0, 0, fmt.Errorf("curl: time to first byte %q (a failed request)", f)
		}
		v = append(v, s*1000)
	}
	if len(v) != n {
		return 0, 0, fmt.Errorf("curl: %d results of %d requests", len(v), n)
	}
	slices.Sort(v)
	return percentile(v, 0.50), percentile(v, 0.95), nil
}

// runIn runs name in node and returns its stdout.
func runIn(tb *testbed.Testbed, node string, timeout time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := tb.Command(ctx, node, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// machine describes this machine: CPU model and count, memory.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
				mem = fmt.Sprintf(", %.0f GB RAM", kb/1024/1024)
			}
		}
	}
	return fmt.Sprintf("%d × %s%s", runtime.NumCPU(), model, mem)
}

func output(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "unknown"
	}
	return string(out)
}
