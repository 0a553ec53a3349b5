package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Pausing a guest (the warm pool, issue #14): a pooled guest waits with
// its vCPUs stopped, so an idle pool costs memory and no CPU. QMP stop and
// cont freeze the guest's virtual clock too (a SIGSTOP of QEMU would not:
// the guest would see time jump and its timers fire at once on resume).
//
// The pool keeps one QMP connection per paused guest (QEMU's QMP socket
// serves one client at a time), so a resume costs one round trip, not a
// connect and a capabilities negotiation.

// pauseTimeout bounds each pause or resume.
const pauseTimeout = 5 * time.Second

// Pauser holds a QMP connection to one machine for pause and resume.
type Pauser struct {
	mu sync.Mutex
	q  *qmp
}

// NewPauser connects to the QMP socket of the machine in dir.
func (b *Backend) NewPauser(ctx context.Context, dir vmdir.Dir) (*Pauser, error) {
	ctx, cancel := context.WithTimeout(ctx, pauseTimeout)
	defer cancel()
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return nil, err
	}
	return &Pauser{q: q}, nil
}

// Release calls release, which must close the caller's agent connection,
// and waits until the guest has let go of the agent port (as Save does):
// a new connection made after that is a new session for the guest too,
// never mistaken for the tail of the old one.
func (p *Pauser) Release(ctx context.Context, release func()) error {
	p.mu.Lock()
	ctx, cancel := context.WithTimeout(ctx, pauseTimeout)
	p.q.dropEvents()
	release()
	err := p.q.waitEvent(ctx, "VSERPORT_CHANGE", agentPortChanged)
	cancel()
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("guest did not release the agent port: %w", err)
	}
	return nil
}

// Pause stops the guest's vCPUs and waits until QEMU says it is paused.
func (p *Pauser) Pause(ctx context.Context) error { return p.run(ctx, "stop", "paused") }

// Resume lets the guest run again.
func (p *Pauser) Resume(ctx context.Context) error { return p.run(ctx, "cont", "running") }

func (p *Pauser) run(ctx context.Context, cmd, want string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, pauseTimeout)
	defer cancel()
	if _, err := p.q.call(ctx, cmd, nil, nil); err != nil {
		return err
	}
	// stop and cont take effect before QEMU answers; query-status makes
	// sure of it, and a guest in any other state is refused here rather
	// than handed out.
	r, err := p.q.call(ctx, "query-status", nil, nil)
	if err != nil {
		return err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(r, &st); err != nil {
		return fmt.Errorf("qmp query-status: %w", err)
	}
	if st.Status != want {
		return fmt.Errorf("guest is %q after %s (want %q)", st.Status, cmd, want)
	}
	return nil
}

// Close drops the QMP connection (the guest keeps its state).
func (p *Pauser) Close() error { return p.q.Close() }
