package supervisor

// Pooled workspaces (issue #14, warm pool): a warm pool of workspaces keeps
// ordinary, detached workspace supervisors whose guests wait paused until a
// `workspace create` claims one. The directory is the workspace's own from
// the start (its final id, its own fresh disks); its record's kind is
// instance.KindPooled until the claimer completes it, so no workspace
// command finds it before then.
//
//	POST /v1/pool/pause  -> Status; the guest (booted, primed by the pool
//	                        through /agent) is paused: no CPU while it waits
//	POST /v1/pool/claim  -> Status; resumes the guest and gives it a fresh
//	                        identity (RNG, clock, hostname, machine-id); from
//	                        then on it is an ordinary workspace supervisor
//
// The pool's link: a pooled supervisor inherits one end of a socket pair
// whose other end the pool's process holds (PoolLinkEnv names the
// descriptor). When it reads EOF before a claim (the pool stopped, or was
// killed), it stops its guest without a power-off (a paused guest answers
// nothing) and removes its whole directory: nothing of an unclaimed pooled
// workspace outlives its pool. After a claim the link means nothing; the
// workspace belongs to its claimer and outlives the pool. A claim and the
// end of the link are decided under one lock, so exactly one of them wins.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// PoolLinkEnv names the descriptor of a pooled supervisor's link to its
// pool; the supervisor removes it from its environment at once.
const PoolLinkEnv = "PYRO_POOL_LINK_FD"

// StartPool is the start mode of a guest handed out by a warm pool.
const StartPool = "pool"

// PausedGuest is a paused pooled guest: Resume lets it run again, Close
// lets go of the pause control (QEMU's QMP socket serves one client, and
// the host's checkpoints need it after the claim).
type PausedGuest interface {
	Resume(ctx context.Context) error
	Close() error
}

// pauseVM pauses a running guest through its backend.
func pauseVM(ctx context.Context, v *vm.VM) (PausedGuest, error) {
	p, err := v.NewPauser(ctx)
	if err != nil {
		return nil, err
	}
	if err := v.Pause(ctx, p); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// poolState is a pooled supervisor's part, guarded by server.mu.
type poolState struct {
	link    io.Closer
	paused  PausedGuest
	claimed bool
	// gone: the link ended before a claim; the supervisor discards its
	// guest and directory.
	gone bool
}

// SpawnPooled is Spawn for a pooled workspace: the supervisor inherits
// link as its pool link. The caller closes its copy of link after.
func SpawnPooled(binary string, dir vmdir.Dir, link *os.File) error {
	return spawn(binary, dir, func(cmd *exec.Cmd) {
		cmd.ExtraFiles = []*os.File{link}
		cmd.Env = append(os.Environ(), PoolLinkEnv+"=3")
	})
}

// takePoolLink returns the inherited pool link, if any, marked
// close-on-exec so QEMU never holds it (and closeInherited keeps it).
func takePoolLink() *os.File {
	v, ok := os.LookupEnv(PoolLinkEnv)
	if !ok {
		return nil
	}
	_ = os.Unsetenv(PoolLinkEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return nil
	}
	// Non-blocking, so the file uses Go's poller and a Close at the
	// claim ends the read waiting on it (and frees the descriptor).
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), "pool-link")
}

// startPooled makes s a pooled supervisor watching link (nil: no pool, it
// is discarded at once).
func (s *server) startPooled(link io.ReadCloser) {
	s.pool = &poolState{link: link}
	s.status.Pooled = true
	if link == nil {
		s.poolGone()
		return
	}
	go func() {
		// The pool writes nothing: a read returns at EOF (its process
		// ended or closed its end), or with a byte it should not send.
		var b [1]byte
		_, _ = link.Read(b[:])
		s.poolGone()
	}()
}

// poolGone ends an unclaimed pooled supervisor.
func (s *server) poolGone() {
	s.mu.Lock()
	ps := s.pool
	end := ps != nil && !ps.claimed && !ps.gone
	if end {
		ps.gone = true
	}
	s.mu.Unlock()
	if end {
		s.requestStop(instance.Stopped, instance.CauseRequested, "its warm pool went away before a claim")
	}
}

// pooledDied is the reason an unclaimed pooled guest's VMM exited: only
// pyro's own priming ran in it, so a guest restored from a memory
// snapshot counts against that snapshot (vm.VM.DiedUnused: one that keeps
// dying is discarded), and the reason quotes the guest's console.
func (s *server) pooledDied(v *vm.VM, reason string) string {
	if note, died := v.DiedUnused(s.log, 0); died {
		return "the VMM exited unexpectedly: " + note
	}
	return reason
}

// reasonSuffix is ": reason", or nothing without one.
func reasonSuffix(reason string) string {
	if reason == "" {
		return ""
	}
	return ": " + reason
}

// discarding says the supervisor ends an unclaimed pooled guest: no
// power-off (a paused guest answers nothing; its disks hold nothing of
// anyone), and its directory goes with it.
func (s *server) discarding() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool != nil && !s.pool.claimed
}

// paused says the guest waits paused (its agent answers nothing).
func (s *server) paused() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool != nil && s.pool.paused != nil
}

func (s *server) poolRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/pool/pause", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.poolPause(r.Context())
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /v1/pool/claim", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.poolClaim(r.Context())
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
}

// pooledVM returns the running guest of an unclaimed, unpaused (or, with
// paused, paused) pooled supervisor.
func (s *server) pooledVM(paused bool) (*vm.VM, *poolState, error) {
	ps, v := s.pool, s.vm
	switch {
	case ps == nil:
		return nil, nil, errdefs.New(errdefs.ErrFailedPrecondition, "", "not a pooled guest")
	case ps.claimed || ps.gone:
		return nil, nil, errdefs.New(errdefs.ErrFailedPrecondition, "", "the pooled guest was claimed or its pool went away")
	case v == nil || s.status.State != instance.Running:
		return nil, nil, errdefs.New(errdefs.ErrFailedPrecondition, "", "the pooled guest is %s%s", s.status.State, reasonSuffix(s.status.Reason))
	case (ps.paused != nil) != paused:
		return nil, nil, errdefs.New(errdefs.ErrFailedPrecondition, "", "the pooled guest is not in the right state (paused: %t)", ps.paused != nil)
	}
	return v, ps, nil
}

func (s *server) poolPause(ctx context.Context) (Status, error) {
	s.mu.Lock()
	v, _, err := s.pooledVM(false)
	s.mu.Unlock()
	if err != nil {
		return Status{}, err
	}
	pause := s.opts.Pause
	if pause == nil {
		pause = pauseVM
	}
	p, err := pause(ctx, v)
	if err != nil {
		return Status{}, fmt.Errorf("pause the pooled guest: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool.claimed || s.pool.gone {
		p.Close()
		return Status{}, errdefs.New(errdefs.ErrFailedPrecondition, "", "the pooled guest's pool went away")
	}
	s.pool.paused = p
	s.status.Paused = true
	return s.status, nil
}

// poolClaim hands the guest to its claimer: resumed, with a new identity
// (fresh kernel RNG state before anything else runs, the clock now, the
// hostname of its id, a new machine-id). Its answer is the guest's health
// check too; a claim that fails ends the supervisor (the pool then
// discards the directory, and the claimer starts a workspace the usual way).
func (s *server) poolClaim(ctx context.Context) (Status, error) {
	s.mu.Lock()
	v, ps, err := s.pooledVM(true)
	if err == nil {
		ps.claimed = true // from here the pool's link means nothing
	}
	s.mu.Unlock()
	if err != nil {
		return Status{}, err
	}
	start := time.Now()
	p := ps.paused
	err = p.Resume(ctx)
	resumed := time.Since(start)
	if err == nil {
		if s.opts.Identity != nil {
			err = s.opts.Identity(ctx, v)
		} else {
			err = v.SetIdentity(ctx, v.ID, v.Net != nil)
		}
	}
	_ = p.Close()
	if ps.link != nil {
		_ = ps.link.Close()
	}
	ms := time.Since(start).Milliseconds()
	s.log.Info("claimed from the pool", "resume_ms", resumed.Milliseconds(), "claim_ms", ms, "err", err)
	s.mu.Lock()
	ps.paused = nil
	s.status.Paused = false
	if err == nil {
		s.status.Pooled = false
		s.status.Start, s.status.BootMS = StartPool, ms
		h := v.Health
		s.status.Health = &h
	}
	st := s.status
	s.mu.Unlock()
	if err != nil {
		s.requestStop(instance.Broken, instance.CauseBootFailed, "the pooled guest failed its hand-out: "+err.Error())
		return Status{}, errdefs.Wrap(errdefs.ErrUnavailable, err, "", "hand out the pooled guest")
	}
	instance.AppendEvent(s.dir, "claimed", map[string]any{"claim_ms": ms})
	return st, nil
}

// PoolPause asks a pooled supervisor to pause its primed guest.
func (c *Client) PoolPause(ctx context.Context) (Status, error) {
	var st Status
	err := c.call(ctx, http.MethodPost, "/v1/pool/pause", nil, &st)
	return st, err
}

// PoolClaim asks a pooled supervisor to hand its guest out.
func (c *Client) PoolClaim(ctx context.Context) (Status, error) {
	var st Status
	err := c.call(ctx, http.MethodPost, "/v1/pool/claim", nil, &st)
	return st, err
}
