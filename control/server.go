package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mcpagent/mcpagent/internal/accept"
)

// Timeout bounds one exchange on the socket, at either end, unless the
// client's context says otherwise.
const Timeout = time.Second

// maxConns bounds the connections served at once; more are closed at once.
const maxConns = 16

// Config configures a Server.
type Config struct {
	// Path is the socket's path. Required.
	Path string
	// DHCP acts on a DHCP event; its error, if any, refuses the request
	// and its text goes back to the client. It may be called from several
	// goroutines at once. Nil refuses every DHCP event.
	DHCP func(DHCPEvent) error
	// Status returns the agent's status. Nil refuses status requests.
	Status func() Status
	// Logger receives requests that could not be read; nil discards.
	Logger *slog.Logger
}

// Server answers requests on a unix socket. Close stops it.
type Server struct {
	cfg  Config
	log  *slog.Logger
	ln   *net.UnixListener
	stop chan struct{} // closed by Close: ends the accept loop's waits
	sem  chan struct{}
	wg   sync.WaitGroup
	once sync.Once
	err  error
}

// Listen creates the socket at cfg.Path, mode 0600, and starts serving.
// A socket left at the path by an agent that is gone is replaced; a live
// one, or a file that is not a socket, is an error.
func Listen(cfg Config) (*Server, error) {
	if cfg.Path == "" {
		return nil, errors.New("control socket: no path")
	}
	if err := removeStale(cfg.Path); err != nil {
		return nil, err
	}
	ln, err := listenPrivate(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", cfg.Path, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{cfg: cfg, log: log, ln: ln, stop: make(chan struct{}), sem: make(chan struct{}, maxConns)}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// removeStale removes a socket at path that nobody listens on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("control socket %s: a file that is not a socket is in the way", path)
	}
	if c, err := net.DialTimeout("unix", path, Timeout); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another agent is listening on it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("control socket %s: remove stale socket: %w", path, err)
	}
	return nil
}

// listenPrivate binds a socket that no one else can connect to even for
// a moment: it is created in a fresh directory of mode 0700 beside path,
// made 0600, and only then renamed to path.
func listenPrivate(path string) (*net.UnixListener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".mcpagent-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// Close must remove path, not the temporary name.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Close stops accepting, waits for the requests being served and removes
// the socket. Only the first call does anything; later calls return its
// result.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.stop)
		s.err = s.ln.Close()
		s.wg.Wait()
		if err := os.Remove(s.cfg.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.err = errors.Join(s.err, err)
		}
	})
	return s.err
}

// acceptLoop serves connections until the listener is closed; out of file
// descriptors, it waits and accepts again.
func (s *Server) acceptLoop() {
	defer s.wg.Done()
	var backoff accept.Backoff
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			wait, retry := backoff.Failed(err)
			if !retry {
				if !errors.Is(err, net.ErrClosed) {
					s.log.Error("control socket accept", "err", err)
				}
				return
			}
			s.log.Warn("control socket accept", "err", err, "retry_in", wait)
			if !accept.Sleep(wait, s.stop) {
				return
			}
			continue
		}
		backoff.Succeeded()
		select {
		case s.sem <- struct{}{}:
		default:
			s.log.Warn("control socket busy: connection dropped", "max", maxConns)
			c.Close()
			continue
		}
		s.wg.Add(1)
		go s.serveConn(c)
	}
}

// serveConn answers the one request of c.
func (s *Server) serveConn(c *net.UnixConn) {
	defer func() { <-s.sem; s.wg.Done() }()
	defer c.Close()
	c.SetDeadline(time.Now().Add(Timeout))
	line, err := readLine(c, MaxRequest)
	if err != nil {
		s.log.Debug("control socket: unreadable request", "err", err)
		return
	}
	resp := s.handle(line)
	b, err := appendLine(nil, resp, MaxResponse)
	if err == nil {
		_, err = c.Write(b)
	}
	if err != nil {
		s.log.Debug("control socket: write response", "err", err)
	}
}

func (s *Server) handle(line []byte) Response {
	req, err := DecodeRequest(line)
	switch {
	case err != nil:
	case req.Status != nil && s.cfg.Status == nil:
		err = errors.New("status requests are not taken")
	case req.Status != nil:
		st := s.cfg.Status()
		return Response{Status: &st}
	case s.cfg.DHCP == nil:
		err = errors.New("dhcp events are not taken")
	default:
		err = s.cfg.DHCP(*req.DHCP)
	}
	if err != nil {
		return Response{Error: err.Error()}
	}
	return Response{}
}

// Send sends req to the agent listening on path and waits for its answer,
// at most Timeout or until ctx ends. It returns nil when the agent did
// what was asked, an error wrapping ErrRefused and the agent's reason when
// it refused, and another error when it could not be asked.
func Send(ctx context.Context, path string, req Request) error {
	_, err := exchange(ctx, path, req)
	return err
}

// exchange sends req and returns the agent's response, or an error
// wrapping ErrRefused if the agent refused it.
func exchange(ctx context.Context, path string, req Request) (Response, error) {
	b, err := AppendRequest(nil, req)
	if err != nil {
		return Response{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return Response{}, fmt.Errorf("reach the agent: %w", err)
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	if _, err := c.Write(b); err != nil {
		return Response{}, fmt.Errorf("send to the agent: %w", err)
	}
	line, err := readLine(c, MaxResponse)
	if err != nil {
		return Response{}, fmt.Errorf("read the agent's answer: %w", err)
	}
	var resp Response
	if err := decodeLine(line, &resp, MaxResponse); err != nil {
		return Response{}, fmt.Errorf("read the agent's answer: %w", err)
	}
	if resp.Error != "" {
		return Response{}, fmt.Errorf("%w: %s", ErrRefused, resp.Error)
	}
	return resp, nil
}

// ErrRefused reports that the agent answered and refused a request.
var ErrRefused = errors.New("the agent refused")
