package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// chunkSize is the most one splice or read takes from a source, and
	// so the most a blocked direction holds in its stash.
	chunkSize = 128 << 10
	// pipeSize is the capacity asked for the worker's pipe (F_SETPIPE_SZ).
	// Each slot of a pipe holds one fragment of a received packet, often
	// less than a page, so the pipe needs more room than chunkSize for one
	// splice to take a whole chunk.
	pipeSize = 4 * chunkSize
	// turnBudget is how many bytes one direction moves before the worker
	// serves other pairs; the direction continues on the next turn.
	turnBudget = 8 * chunkSize
	// maxSpareStashes bounds the stash buffers a worker keeps for reuse.
	maxSpareStashes = 4
	// maxEvents is the size of one epoll_wait batch.
	maxEvents = 128

	spliceFlags = unix.SPLICE_F_NONBLOCK | unix.SPLICE_F_MOVE
	// watchEvents is what a worker asks epoll about each socket:
	// edge-triggered, so an idle or blocked pair costs no wakeups.
	// EPOLLPRI reports TCP urgent data (see handle).
	watchEvents = unix.EPOLLIN | unix.EPOLLPRI | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

	// wakeKey is the epoll key of a worker's eventfd. The key of a
	// socket is its pair's id (from 1) shifted left once, plus its side.
	wakeKey = 0
)

// A worker relays the pairs assigned to it from one goroutine: it waits in
// epoll_wait on their sockets, moves bytes through its own pipe and sweeps
// for idle pairs. All fields but those under mu belong to that goroutine.
type worker struct {
	r      *Relay
	ep     *os.File // the epoll instance, waited on through Go's poller
	rawEp  syscall.RawConn
	epfd   int
	pr, pw int    // the pipe every splice of this worker goes through; -1 if lost
	buf    []byte // for read and write where splice does not work; made on first use
	events []unix.EpollEvent
	pairs  map[uint64]*pair
	ready  []turn // directions that spent their budget and have more to move
	later  []turn // the next ready list, swapped with ready each round
	spare  [][]byte
	now    time.Duration // time since r.epoch, read after each epoll_wait
	sweep  time.Duration // when to look for idle pairs next
	dead   time.Duration // the deadline set on ep, like sweep; -1: none

	mu       sync.Mutex
	wakefd   int  // eventfd that wakes the goroutine; -1 once it exits
	closing  bool // set by Close or a fatal error; no more pairs are taken
	incoming []*pair
}

// A turn is one direction of a pair waiting in a worker's ready list.
type turn struct {
	p *pair
	d int
}

// A pair is two sockets relayed by one worker. Side 0 is a, side 1 is b.
type pair struct {
	id     uint64
	conns  [2]*net.TCPConn
	fds    [2]int
	dirs   [2]direction  // dirs[s] moves bytes from side s to side 1-s
	last   time.Duration // worker clock when a byte last moved
	done   func(Stats)
	closed bool
}

// A direction is the state of moving bytes one way.
type direction struct {
	n          int64  // bytes delivered
	stash      []byte // buffer holding bytes the destination has not taken yet; nil if none
	head, tail int    // the held bytes are stash[head:tail]
	noSplice   bool   // splice failed with EINVAL; read and write instead
	blocked    bool   // the destination returned EAGAIN; wait for EPOLLOUT
	eof        bool   // the source returned EOF
	shut       bool   // the destination was shut down for writing
	queued     bool   // in the worker's ready list
}

func (r *Relay) start(n int) error {
	r.workers = make([]*worker, 0, n)
	for range n {
		w, err := newWorker(r)
		if err != nil {
			for _, w := range r.workers {
				w.release()
			}
			return err
		}
		r.workers = append(r.workers, w)
	}
	r.wg.Add(n)
	for _, w := range r.workers {
		go w.run()
	}
	return nil
}

func (r *Relay) stop() {
	for _, w := range r.workers {
		w.mu.Lock()
		if !w.closing {
			w.closing = true
			w.wakeLocked()
		}
		w.mu.Unlock()
	}
}

func (r *Relay) add(a, b *net.TCPConn, done func(Stats)) error {
	p := &pair{conns: [2]*net.TCPConn{a, b}, done: done}
	for s, c := range p.conns {
		fd, err := socketFD(c)
		if err != nil {
			closeConns(a, b)
			return fmt.Errorf("relay: add: %w", err)
		}
		p.fds[s] = fd
		if err := r.setKeepAlive(c); err != nil {
			// Multipath TCP sockets take SO_KEEPALIVE since Linux 5.13 but
			// TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT only since kernel
			// commit bd11dc4fb969 (2024, backported to stable kernels); the
			// sysctl defaults then apply.
			r.log.Debug("relay: set keepalive", "remote", c.RemoteAddr(), "err", err)
		}
	}
	p.id = r.nextID.Add(1)
	w := r.workers[r.next.Add(1)%uint32(len(r.workers))]
	if err := w.enqueue(p); err != nil {
		closeConns(a, b)
		return fmt.Errorf("relay: add: %w", err)
	}
	return nil
}

// setKeepAlive applies Config.KeepAlive to c.
func (r *Relay) setKeepAlive(c *net.TCPConn) error {
	if r.keep == 0 {
		// net.Dialer and net.ListenConfig turn keepalive on by default.
		return c.SetKeepAlive(false)
	}
	return c.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: r.keep, Interval: r.keep, Count: keepAliveProbes})
}

// socketFD returns the descriptor of c. It stays valid until c is closed.
func socketFD(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(s uintptr) { fd = int(s) }); err != nil {
		return -1, err
	}
	return fd, nil
}

func newWorker(r *Relay) (*worker, error) {
	w := &worker{
		r:      r,
		epfd:   -1,
		dead:   -1,
		pr:     -1,
		pw:     -1,
		wakefd: -1,
		events: make([]unix.EpollEvent, maxEvents),
		pairs:  make(map[uint64]*pair),
	}
	if err := w.openEpoll(); err != nil {
		w.release()
		return nil, err
	}
	var err error
	if w.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		w.release()
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setKey(&ev, wakeKey)
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, w.wakefd, &ev); err != nil {
		w.release()
		return nil, fmt.Errorf("watch eventfd: %w", err)
	}
	if err := w.openPipe(); err != nil {
		w.release()
		return nil, err
	}
	return w, nil
}

// openEpoll creates the worker's epoll instance. It is non-blocking so that
// os.NewFile hands it to Go's poller: a waiting worker parks its goroutine
// there (an epoll instance is readable while it has events) instead of
// holding an OS thread in epoll_wait.
func (w *worker) openEpoll() error {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("create epoll instance: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return fmt.Errorf("set epoll instance non-blocking: %w", err)
	}
	w.epfd, w.ep = fd, os.NewFile(uintptr(fd), "epoll")
	if w.rawEp, err = w.ep.SyscallConn(); err != nil {
		return fmt.Errorf("epoll instance: %w", err)
	}
	return nil
}

func (w *worker) openPipe() error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("create pipe: %w", err)
	}
	w.pr, w.pw = p[0], p[1]
	// A smaller pipe (pipe-user-pages-soft reached) only means shorter
	// splices.
	_, _ = unix.FcntlInt(uintptr(w.pw), unix.F_SETPIPE_SZ, pipeSize)
	return nil
}

// release closes the worker's descriptors.
func (w *worker) release() {
	if w.ep != nil {
		w.ep.Close()
	}
	for _, fd := range []int{w.pr, w.pw} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	w.mu.Lock()
	if w.wakefd >= 0 {
		unix.Close(w.wakefd)
		w.wakefd = -1
	}
	w.mu.Unlock()
}

// enqueue hands p to the worker's goroutine.
func (w *worker) enqueue(p *pair) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing {
		return net.ErrClosed
	}
	w.r.live.Add(1)
	w.incoming = append(w.incoming, p)
	if len(w.incoming) == 1 {
		w.wakeLocked()
	}
	return nil
}

// wakeLocked makes the worker's epoll_wait return. w.mu is held.
func (w *worker) wakeLocked() {
	// Any non-zero 8-byte value adds to the eventfd counter, whatever the
	// byte order.
	one := [8]byte{1}
	if _, err := unix.Write(w.wakefd, one[:]); err != nil {
		w.r.log.Error("relay: wake worker", "err", err)
	}
}

func setKey(ev *unix.EpollEvent, key uint64) {
	ev.Fd, ev.Pad = int32(uint32(key)), int32(uint32(key>>32))
}

func eventKey(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// run is the worker's goroutine.
func (w *worker) run() {
	defer w.r.wg.Done()
	for {
		n, err := w.wait()
		if err != nil {
			// Only a bug makes waiting fail; end the pairs rather than spin.
			w.r.log.Error("relay: wait for socket events", "err", err)
			w.exit()
			return
		}
		w.now = time.Since(w.r.epoch)
		for i := 0; i < n; i++ {
			ev := &w.events[i]
			key := eventKey(ev)
			if key == wakeKey {
				if !w.wake() {
					return
				}
				continue
			}
			if p := w.pairs[key>>1]; p != nil {
				w.handle(p, int(key&1), ev.Events)
			}
		}
		w.runReady()
		w.sweepIdle()
	}
}

// wait fills w.events with the pending socket events and returns their
// number. With none pending it waits for some, or until the next idle
// sweep, unless directions in the ready list want their turn.
func (w *worker) wait() (int, error) {
	if len(w.ready) > 0 {
		return epollPoll(w.epfd, w.events)
	}
	if w.r.sweep > 0 && w.sweep != w.dead {
		w.dead = w.sweep
		if err := w.ep.SetReadDeadline(w.r.epoch.Add(w.sweep)); err != nil {
			return 0, err
		}
	}
	var n int
	var err error
	rerr := w.rawEp.Read(func(fd uintptr) bool {
		n, err = epollPoll(int(fd), w.events)
		return n > 0 || err != nil
	})
	if errors.Is(rerr, os.ErrDeadlineExceeded) {
		return 0, nil
	}
	return n, errors.Join(rerr, err)
}

// epollPoll is epoll_wait without waiting.
func epollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	for {
		n, err := unix.EpollWait(epfd, events, 0)
		if err != unix.EINTR {
			return max(n, 0), err
		}
	}
}

// wake takes the pairs handed over by Add. It reports whether the worker
// goes on; if it was closed, it ends all pairs first.
func (w *worker) wake() bool {
	var b [8]byte
	_, _ = unix.Read(w.wakefd, b[:]) // EAGAIN: another wake took it already
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		w.exit()
		return false
	}
	in := w.incoming
	w.incoming = nil
	w.mu.Unlock()
	for _, p := range in {
		w.register(p)
	}
	return true
}

// exit aborts every pair of the worker, including those not yet taken
// from Add, and releases the worker.
func (w *worker) exit() {
	w.mu.Lock()
	w.closing = true
	in := w.incoming
	w.incoming = nil
	w.mu.Unlock()
	for _, p := range in {
		w.pairs[p.id] = p
	}
	for _, p := range w.pairs {
		w.close(p, Stats{Reset: true}, true, errors.New("relay closed"))
	}
	w.release()
}

func (w *worker) register(p *pair) {
	w.pairs[p.id] = p
	p.last = w.now
	for s, fd := range p.fds {
		ev := unix.EpollEvent{Events: watchEvents}
		setKey(&ev, p.id<<1|uint64(s))
		if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			w.r.log.Error("relay: watch socket", "remote", p.conns[s].RemoteAddr(), "err", err)
			w.close(p, Stats{Reset: true}, true, err)
			return
		}
	}
}

// handle acts on the epoll events ev of side s of p.
func (w *worker) handle(p *pair, s int, ev uint32) {
	if ev&unix.EPOLLERR != 0 {
		// A reset or keepalive timeout. Read it here: the direction
		// that reads from s may be finished already.
		if e, err := unix.GetsockoptInt(p.fds[s], unix.SOL_SOCKET, unix.SO_ERROR); err == nil && e != 0 {
			w.abort(p, s, syscall.Errno(e))
			return
		}
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		if in := &p.dirs[1-s]; in.blocked {
			in.blocked = false
			w.pump(p, 1-s)
		}
	}
	if ev&unix.EPOLLPRI != 0 {
		// Urgent data: splice stops at its mark for good, and would take
		// the FIN after it for the end, losing the rest. read steps over
		// the urgent byte, as it does for any proxy that reads.
		p.dirs[s].noSplice = true
	}
	if ev&(unix.EPOLLIN|unix.EPOLLPRI|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		w.pump(p, s)
	}
}

// pump moves bytes from side d of p to the other side until the source
// has nothing more, the destination is full, or the turn's budget is
// spent, and shuts the destination down for writing after the source's
// EOF.
func (w *worker) pump(p *pair, d int) {
	dir := &p.dirs[d]
	for moved := 0; !p.closed && !dir.shut && !dir.blocked; {
		switch {
		case dir.head < dir.tail:
			w.flush(p, d)
		case dir.eof:
			w.finish(p, d)
		case moved >= turnBudget:
			if !dir.queued {
				dir.queued = true
				w.ready = append(w.ready, turn{p, d})
			}
			return
		default:
			n, more := w.move(p, d)
			if !more {
				return
			}
			moved += n
		}
	}
}

// runReady gives every direction in the ready list another turn.
func (w *worker) runReady() {
	turns := w.ready
	w.ready = w.later[:0]
	for i, t := range turns {
		t.p.dirs[t.d].queued = false
		w.pump(t.p, t.d)
		turns[i] = turn{}
	}
	w.later = turns[:0]
}

// move takes up to one chunk from side d of p and passes it to the other
// side. It returns the bytes taken and whether to go on: false when the
// source has nothing, the destination is full or the pair was closed.
func (w *worker) move(p *pair, d int) (int, bool) {
	dir := &p.dirs[d]
	if dir.noSplice || w.pr < 0 {
		return w.copyChunk(p, d)
	}
	n, err := unix.Splice(p.fds[d], nil, w.pw, nil, chunkSize, spliceFlags)
	switch {
	case err == unix.EINVAL:
		// The source's protocol cannot splice_read (Multipath TCP on
		// older kernels).
		dir.noSplice = true
		return 0, true
	case err == unix.EINTR:
		return 0, true
	case err == unix.EAGAIN:
		return 0, false
	case err != nil:
		w.abort(p, d, fmt.Errorf("read: %w", err))
		return 0, false
	case n == 0 && atUrgentMark(p.fds[d]):
		// splice stops at a TCP urgent mark as at an EOF, and the
		// EPOLLPRI that handle acts on may not have come yet: read
		// steps over the urgent byte.
		dir.noSplice = true
		return 0, true
	case n == 0:
		dir.eof = true
		return 0, true
	}
	p.last = w.now
	return int(n), w.spliceOut(p, d, int(n))
}

// atUrgentMark reports whether the next byte to read from the socket fd is
// TCP urgent data (SIOCATMARK); false for sockets without urgent data,
// such as Multipath TCP ones.
func atUrgentMark(fd int) bool {
	v, err := unix.IoctlGetInt(fd, unix.SIOCATMARK)
	return err == nil && v != 0
}

// spliceOut passes the n bytes in the worker's pipe to the destination of
// direction d. The pipe serves every pair of the worker, so whatever the
// destination does not take moves to the direction's stash.
func (w *worker) spliceOut(p *pair, d, n int) bool {
	dir := &p.dirs[d]
	for n > 0 {
		m, err := unix.Splice(w.pr, nil, p.fds[1-d], nil, n, spliceFlags)
		if m > 0 {
			n -= int(m)
			dir.n += int64(m)
			continue
		}
		if err == unix.EINTR {
			continue
		}
		if serr := w.stashPipe(dir, n); serr != nil {
			w.abort(p, 1-d, serr)
			return false
		}
		if err == unix.EINVAL {
			dir.noSplice = true
			return true
		}
		if err == nil {
			err = io.ErrNoProgress
		}
		w.writeFailed(p, d, err)
		return false
	}
	return true
}

// stashPipe moves the n bytes left in the worker's pipe to dir's stash.
func (w *worker) stashPipe(dir *direction, n int) error {
	w.newStash(dir)
	for dir.tail < n {
		m, err := unix.Read(w.pr, dir.stash[dir.tail:n])
		if m > 0 {
			dir.tail += m
			continue
		}
		if err == unix.EINTR {
			continue
		}
		// The pipe holds bytes of unknown owner now: replace it, or fall
		// back to read and write for the whole worker.
		unix.Close(w.pr)
		unix.Close(w.pw)
		w.pr, w.pw = -1, -1
		if perr := w.openPipe(); perr != nil {
			w.r.log.Error("relay: replace pipe", "err", perr)
		}
		return fmt.Errorf("empty pipe: %w", err)
	}
	return nil
}

// copyChunk is move for sockets that cannot splice.
func (w *worker) copyChunk(p *pair, d int) (int, bool) {
	dir := &p.dirs[d]
	if w.buf == nil {
		w.buf = make([]byte, chunkSize)
	}
	n, err := unix.Read(p.fds[d], w.buf)
	switch {
	case err == unix.EINTR:
		return 0, true
	case err == unix.EAGAIN:
		return 0, false
	case err != nil:
		w.abort(p, d, fmt.Errorf("read: %w", err))
		return 0, false
	case n == 0:
		dir.eof = true
		return 0, true
	}
	p.last = w.now
	sent, err := w.send(p, d, w.buf[:n])
	if err != nil {
		w.newStash(dir)
		dir.tail = copy(dir.stash, w.buf[sent:n])
		w.writeFailed(p, d, err)
		return n, false
	}
	return n, true
}

// flush writes the stash of direction d to its destination.
func (w *worker) flush(p *pair, d int) {
	dir := &p.dirs[d]
	sent, err := w.send(p, d, dir.stash[dir.head:dir.tail])
	dir.head += sent
	if err != nil {
		w.writeFailed(p, d, err)
		return
	}
	w.dropStash(dir)
}

// send writes b to the destination of direction d until all is written or
// an error, EAGAIN included, stops it.
func (w *worker) send(p *pair, d int, b []byte) (int, error) {
	sent := 0
	var err error
	for sent < len(b) {
		m, werr := unix.Write(p.fds[1-d], b[sent:])
		if m > 0 {
			sent += m
			continue
		}
		if werr == unix.EINTR {
			continue
		}
		if err = werr; err == nil {
			err = io.ErrNoProgress
		}
		break
	}
	if sent > 0 {
		p.dirs[d].n += int64(sent)
		p.last = w.now
	}
	return sent, err
}

// writeFailed handles an error writing to the destination of direction d:
// wait for room after EAGAIN, else reset the pair.
func (w *worker) writeFailed(p *pair, d int, err error) {
	if err == unix.EAGAIN {
		p.dirs[d].blocked = true
		return
	}
	w.abort(p, 1-d, fmt.Errorf("write: %w", err))
}

// finish shuts the destination of direction d down for writing after its
// source's EOF, and closes the pair once both directions are finished.
func (w *worker) finish(p *pair, d int) {
	p.dirs[d].shut = true
	if err := unix.Shutdown(p.fds[1-d], unix.SHUT_WR); err != nil {
		w.abort(p, 1-d, fmt.Errorf("shut down for writing: %w", err))
		return
	}
	if p.dirs[1-d].shut {
		w.close(p, Stats{}, false, nil)
	}
}

// sweepIdle closes the pairs idle for longer than the idle timeout, once
// per sweep interval.
func (w *worker) sweepIdle() {
	if w.r.sweep == 0 || w.now < w.sweep {
		return
	}
	w.sweep = w.now + w.r.sweep
	for _, p := range w.pairs {
		if w.now-p.last >= w.r.cfg.IdleTimeout {
			w.close(p, Stats{Idle: true}, true, nil)
		}
	}
}

// abort resets p after an error on side s.
func (w *worker) abort(p *pair, s int, err error) {
	w.close(p, Stats{Reset: true}, true, fmt.Errorf("side %c: %w", "ab"[s], err))
}

// close closes both sockets of p, abortively (SO_LINGER 0, so the kernel
// sends RST or MP_FASTCLOSE) or not, and reports st to p's callback.
func (w *worker) close(p *pair, st Stats, abortive bool, err error) {
	p.closed = true
	delete(w.pairs, p.id)
	st.AtoB, st.BtoA = p.dirs[0].n, p.dirs[1].n
	w.r.log.Debug("relay: pair closed", "a", p.conns[0].RemoteAddr(), "b", p.conns[1].RemoteAddr(),
		"atob", st.AtoB, "btoa", st.BtoA, "reset", st.Reset, "idle", st.Idle, "err", err)
	// Closing the descriptors also removes them from the epoll instance.
	for s, c := range p.conns {
		if abortive {
			_ = c.SetLinger(0)
		}
		_ = c.Close()
		w.dropStash(&p.dirs[s])
	}
	w.r.live.Add(-1)
	if p.done != nil {
		p.done(st)
	}
}

// newStash gives dir an empty stash buffer.
func (w *worker) newStash(dir *direction) {
	if n := len(w.spare); n > 0 {
		dir.stash = w.spare[n-1]
		w.spare[n-1] = nil
		w.spare = w.spare[:n-1]
	} else {
		dir.stash = make([]byte, chunkSize)
	}
	dir.head, dir.tail = 0, 0
}

// dropStash takes dir's stash buffer back, if it has one.
func (w *worker) dropStash(dir *direction) {
	if dir.stash != nil && len(w.spare) < maxSpareStashes {
		w.spare = append(w.spare, dir.stash)
	}
	dir.stash, dir.head, dir.tail = nil, 0, 0
}
