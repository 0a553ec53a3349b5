package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/unixsock"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Guest is one pooled guest, as the pool's owner made it: restored (or
// booted) and paused, its VMM a child of the pool's process, so it dies
// with the pool whatever happens to the pool.
type Guest interface {
	ID() string
	Info() GuestInfo
	// HandOut resumes the guest and gives it the identity of to.ID (the
	// claimer's VM id; a workspace pool's guest keeps its own id, which
	// the claim answers): fresh RNG state first, then the clock, hostname
	// and machine-id. It is the guest's health check too.
	HandOut(ctx context.Context, to Claimer) error
	// OpenStream opens a raw stream to the guest agent (one HTTP
	// connection of the agent API).
	OpenStream(ctx context.Context) (net.Conn, error)
	// Done is closed when the guest's VMM exited.
	Done() <-chan struct{}
	// Close stops the guest and removes its files.
	Close() error
}

// Claimer is who a guest is handed out to.
type Claimer struct {
	// ID is the claimer's VM id.
	ID string
	// PID is the claimer's process (from the connection's credentials).
	PID int
}

// Config configures a Server.
type Config struct {
	// Root is the state directory.
	Root string
	Key  Key
	// Size is how many ready guests the pool keeps.
	Size int
	// Fill makes one guest of Key, paused. It is called one at a time, in
	// the background, whenever fewer than Size guests are ready.
	Fill   func(ctx context.Context) (Guest, error)
	Logger *slog.Logger
	// HandoutTimeout bounds a hand-out (resume and identity); default 5 s.
	HandoutTimeout time.Duration
	// FillTimeout bounds one Fill; default DefaultFillTimeout. A fill
	// stuck past it (say a pause its guest never answers) ends with its
	// context, discards what it made, and the pool goes on filling.
	FillTimeout time.Duration
}

// DefaultFillTimeout is a fill's default bound: far above a restore and
// priming under TCG on a loaded host (seconds), and above the cold boot
// that builds a missing memory snapshot first (bounded at 2 min itself).
const DefaultFillTimeout = 3 * time.Minute

// MaxSize bounds a pool's size: each guest holds its memory.
const MaxSize = 64

// Server is a running pool.
type Server struct {
	cfg    Config
	sock   string
	lockFD int
	ln     net.Listener
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{}

	closeOnce sync.Once
	done      chan struct{}

	mu       sync.Mutex
	closed   bool
	ready    []Guest
	leases   map[string]*lease
	filling  int
	served   int64
	failures int64
	lastErr  string
	lastMS   float64
	started  time.Time
}

type lease struct {
	g     Guest
	token string
	once  sync.Once
	conns map[net.Conn]struct{}
}

// Start claims the pool's socket for cfg.Key (a second pool of the same
// configuration is ErrAlreadyExists), listens, and begins filling in the
// background.
func Start(cfg Config) (*Server, error) {
	if cfg.Size < 1 || cfg.Size > MaxSize {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, fmt.Sprintf("use a size from 1 to %d", MaxSize), "pool size %d", cfg.Size)
	}
	if cfg.Fill == nil {
		return nil, errors.New("pool: no fill function")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HandoutTimeout == 0 {
		cfg.HandoutTimeout = 5 * time.Second
	}
	if cfg.FillTimeout == 0 {
		cfg.FillTimeout = DefaultFillTimeout
	}
	dir := filepath.Join(cfg.Root, DirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	sock := SocketPath(cfg.Root, cfg.Key)
	fd, err := unix.Open(lockPath(sock), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open pool lock: %w", err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		return nil, errdefs.New(errdefs.ErrAlreadyExists, "see it with `pyro pool status`; stop it with `pyro pool stop`",
			"a pool of %s (%d vCPU, %d MiB) already runs", cfg.Key.Environment, cfg.Key.VCPUs, cfg.Key.MemMiB)
	}
	// Holding the lock, any socket file left is a dead pool's.
	_ = os.Remove(sock)
	ln, err := unixsock.Listen(sock)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen on pool socket: %w", err)
	}
	_ = os.Chmod(sock, 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, sock: sock, lockFD: fd, ln: ln, log: cfg.Logger.With("pool", cfg.Key.ID()), ctx: ctx, cancel: cancel,
		wake: make(chan struct{}, 1), done: make(chan struct{}), leases: map[string]*lease{}, started: time.Now().UTC()}
	s.wg.Add(2)
	go s.acceptLoop()
	go s.fillLoop()
	return s, nil
}

// Socket is the pool's socket path.
func (s *Server) Socket() string { return s.sock }

// Done is closed once the pool has closed (Close, or a client's stop
// request: `pyro pool stop`) and destroyed its guests.
func (s *Server) Done() <-chan struct{} { return s.done }

// Status is the pool's state now.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Key: s.cfg.Key, KeyID: s.cfg.Key.ID(), Socket: s.sock, PID: os.Getpid(), Size: s.cfg.Size,
		Ready: len(s.ready), Leased: len(s.leases), Filling: s.filling, Served: s.served, Failures: s.failures,
		LastError: s.lastErr, LastHandoutMS: s.lastMS, StartedAt: s.started}
	for _, g := range s.ready {
		if p := g.Info().VMMPID; p > 0 {
			st.ReadyGuestsPID = append(st.ReadyGuestsPID, p)
		}
	}
	return st
}

// WaitReady waits until n guests are ready (at most Size), ctx ends or
// the pool closes.
func (s *Server) WaitReady(ctx context.Context, n int) error {
	n = min(n, s.cfg.Size)
	for {
		if s.Status().Ready >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.ctx.Done():
			return errors.New("pool closed")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close stops accepting, destroys every guest (ready and leased: nothing
// of the pool outlives it) and removes the socket. It waits for a fill in
// progress to give up.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		ready := s.ready
		s.ready = nil
		var leases []*lease
		for _, l := range s.leases {
			leases = append(leases, l)
		}
		s.mu.Unlock()
		_ = s.ln.Close()
		s.cancel()
		for _, g := range ready {
			s.closeGuest(g)
		}
		for _, l := range leases {
			s.endLease(l)
		}
		s.wg.Wait()
		_ = os.Remove(s.sock)
		unix.Close(s.lockFD)
		close(s.done)
	})
	return nil
}

func (s *Server) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Server) closeGuest(g Guest) {
	if err := g.Close(); err != nil {
		s.log.Debug("close pooled guest", "guest", g.ID(), "err", err)
	}
}

func (s *Server) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.failures++
	s.lastErr = msg
	s.mu.Unlock()
	s.log.Warn(msg)
}

// fillLoop keeps Size guests ready, making one at a time (each restore
// takes the host's CPU), with a growing pause after failures.
func (s *Server) fillLoop() {
	defer s.wg.Done()
	backoff := time.Second
	for {
		s.mu.Lock()
		need := !s.closed && len(s.ready)+s.filling < s.cfg.Size
		if need {
			s.filling++
		}
		s.mu.Unlock()
		if !need {
			select {
			case <-s.wake:
				continue
			case <-s.ctx.Done():
				return
			}
		}
		fctx, cancel := context.WithTimeout(s.ctx, s.cfg.FillTimeout)
		g, err := s.cfg.Fill(fctx)
		if err != nil && fctx.Err() != nil && s.ctx.Err() == nil {
			err = fmt.Errorf("not done within %s: %w", s.cfg.FillTimeout, err)
		}
		cancel()
		s.mu.Lock()
		s.filling--
		closed := s.closed
		if err == nil && !closed {
			s.ready = append(s.ready, g)
		}
		s.mu.Unlock()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			s.fail("make a pooled guest: %v", err)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		if closed {
			s.closeGuest(g)
			return
		}
		backoff = time.Second
		s.wg.Add(1)
		go s.watchReady(g)
	}
}

// watchReady drops a ready guest whose VMM died (it is never handed out).
func (s *Server) watchReady(g Guest) {
	defer s.wg.Done()
	select {
	case <-g.Done():
	case <-s.ctx.Done():
		return
	}
	s.mu.Lock()
	found := false
	for i, r := range s.ready {
		if r == g {
			s.ready = append(s.ready[:i:i], s.ready[i+1:]...)
			found = true
			break
		}
	}
	s.mu.Unlock()
	if found {
		s.fail("pooled guest %s died while waiting", g.ID())
		s.closeGuest(g)
		s.kick()
	}
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

// peerIsOwner says whether the connecting process runs as this user, and
// which process it is.
func peerIsOwner(c net.Conn) (pid int, ok bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil {
		return 0, false
	}
	return int(cred.Pid), int(cred.Uid) == os.Getuid()
}

func (s *Server) handle(c net.Conn) {
	keep := false
	defer func() {
		if !keep {
			c.Close()
		}
	}()
	pid, owner := peerIsOwner(c)
	if !owner {
		return
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := readLine(c, maxRequestBytes)
	if err != nil {
		return
	}
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		_ = writeJSONLine(c, reply{Error: "bad request: " + err.Error()})
		return
	}
	switch req.Op {
	case "status":
		st := s.Status()
		_ = writeJSONLine(c, reply{Status: &st})
	case "stop":
		st := s.Status()
		_ = writeJSONLine(c, reply{Status: &st})
		// Close waits for this handler: it runs on its own.
		go s.Close()
	case "claim":
		s.claim(c, req, pid)
	case "attach":
		keep = s.attach(c, req)
	default:
		_ = writeJSONLine(c, reply{Error: fmt.Sprintf("unknown op %q", req.Op)})
	}
}

// claim hands out a ready guest and holds the lease until the claimer's
// connection closes, the guest dies or the pool closes; then the guest is
// destroyed.
func (s *Server) claim(c net.Conn, req request, pid int) {
	if req.Key == nil || *req.Key != s.cfg.Key {
		_ = writeJSONLine(c, reply{Error: "configuration differs from the pool's"})
		return
	}
	if err := vmdir.ValidateID(req.ID); err != nil {
		_ = writeJSONLine(c, reply{Error: "bad id: " + err.Error()})
		return
	}
	start := time.Now()
	var g Guest
	for g == nil {
		s.mu.Lock()
		if s.closed || len(s.ready) == 0 {
			s.mu.Unlock()
			_ = writeJSONLine(c, reply{Error: "the pool has no ready guest", Empty: true})
			return
		}
		g = s.ready[0]
		s.ready = s.ready[1:]
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandoutTimeout)
		err := g.HandOut(ctx, Claimer{ID: req.ID, PID: pid})
		cancel()
		if err != nil {
			s.fail("hand out pooled guest %s: %v", g.ID(), err)
			s.closeGuest(g)
			g = nil
		}
	}
	if s.cfg.Key.Workspace {
		s.transfer(c, g, req, start)
		return
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	l := &lease{g: g, token: hex.EncodeToString(tok[:]), conns: map[net.Conn]struct{}{}}
	ms := float64(time.Since(start).Microseconds()) / 1000
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.leases[l.token] = l
		s.served++
		s.lastMS = ms
	}
	s.mu.Unlock()
	if closed {
		s.closeGuest(g)
		_ = writeJSONLine(c, reply{Error: "the pool is closing", Empty: true})
		return
	}
	defer s.endLease(l)
	err := writeJSONLine(c, reply{Claimed: &Claimed{Guest: g.ID(), Token: l.token, GuestInfo: g.Info(), HandoutMS: ms}})
	s.kick() // refill now that the hand-out is done
	if err != nil {
		return
	}
	s.log.Info("handed out", "guest", g.ID(), "to", req.ID, "ms", ms)
	_ = c.SetDeadline(time.Time{})
	gone := make(chan struct{})
	go func() {
		// The claimer writes nothing more: a read returns when it closes
		// the connection or its process ends.
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<10))
		close(gone)
	}()
	select {
	case <-gone:
	case <-g.Done():
	case <-s.ctx.Done():
	}
	c.Close()
}

// transfer answers the claim of a workspace pool's guest: handed out, it
// is the claimer's for good (a workspace outlives the pool), so there is
// no lease and the pool forgets it, also when it is closing meanwhile.
func (s *Server) transfer(c net.Conn, g Guest, req request, start time.Time) {
	ms := float64(time.Since(start).Microseconds()) / 1000
	s.mu.Lock()
	s.served++
	s.lastMS = ms
	s.mu.Unlock()
	if err := writeJSONLine(c, reply{Claimed: &Claimed{Guest: g.ID(), GuestInfo: g.Info(), HandoutMS: ms}}); err != nil {
		// The claimer went away during the hand-out (its deadline
		// passed): nobody completes the workspace, and reconcile would
		// leave it, guest running, for as long as the claimer lives
		// (its creator; a server lives long). It goes now.
		s.fail("hand out pooled guest %s: the claimer went away: %v", g.ID(), err)
		s.closeGuest(g)
	} else if err := readAdopt(c, g.ID()); err != nil {
		// The answer was written, but the claimer did not take it: its
		// read timed out first, or it refused the answer. It falls back
		// to a create of its own, so the workspace goes now, as above.
		s.fail("hand out pooled guest %s: the claimer did not adopt it: %v", g.ID(), err)
		s.closeGuest(g)
	}
	s.kick()
	s.log.Info("handed out", "guest", g.ID(), "to", req.ID, "ms", ms)
}

// readAdopt reads a workspace claimer's adopt line for guest. It waits a
// whole ClaimTimeout after the answer: longer than the claimer, whose
// deadline started before the answer, may still write it.
func readAdopt(c net.Conn, guest string) error {
	_ = c.SetDeadline(time.Now().Add(ClaimTimeout))
	line, err := readLine(c, maxRequestBytes)
	if err != nil {
		return err
	}
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		return err
	}
	if req.Op != "adopt" || req.Guest != guest {
		return fmt.Errorf("unexpected %q for %.64q", req.Op, req.Guest)
	}
	return nil
}

func (s *Server) endLease(l *lease) {
	l.once.Do(func() {
		s.mu.Lock()
		delete(s.leases, l.token)
		conns := l.conns
		l.conns = nil
		s.mu.Unlock()
		for c := range conns {
			c.Close()
		}
		s.closeGuest(l.g)
	})
}

// attach splices c to a new agent stream of a leased guest; it reports
// whether c is now owned by the splice.
func (s *Server) attach(c net.Conn, req request) bool {
	s.mu.Lock()
	l := s.leases[req.Token]
	s.mu.Unlock()
	if l == nil || req.Token == "" || l.g.ID() != req.Guest {
		_ = writeJSONLine(c, reply{Error: "no such lease"})
		return false
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	st, err := l.g.OpenStream(ctx)
	cancel()
	if err != nil {
		_ = writeJSONLine(c, reply{Error: "open agent stream: " + err.Error()})
		return false
	}
	s.mu.Lock()
	if l.conns == nil { // the lease ended meanwhile
		s.mu.Unlock()
		st.Close()
		return false
	}
	l.conns[c] = struct{}{}
	l.conns[st] = struct{}{}
	s.mu.Unlock()
	if err := writeJSONLine(c, reply{}); err != nil {
		st.Close()
		return false
	}
	_ = c.SetDeadline(time.Time{})
	go splice(c, st, func() {
		s.mu.Lock()
		if l.conns != nil {
			delete(l.conns, c)
			delete(l.conns, st)
		}
		s.mu.Unlock()
	})
	return true
}

// splice copies both ways; when either way ends both ends close.
func splice(a, b net.Conn, done func()) {
	var once sync.Once
	end := func() {
		once.Do(func() {
			a.Close()
			b.Close()
			done()
		})
	}
	go func() { _, _ = io.Copy(a, b); end() }()
	_, _ = io.Copy(b, a)
	end()
}
