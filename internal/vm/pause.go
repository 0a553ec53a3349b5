package vm

import (
	"context"
	"fmt"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
)

// Pauser pauses and resumes one running guest (the warm pool keeps its
// guests paused: no CPU while they wait).
type Pauser interface {
	// Release closes release's agent connection and waits until the
	// guest let go of it.
	Release(ctx context.Context, release func()) error
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	Close() error
}

// pauserBackend is a backend whose machines can be paused.
type pauserBackend interface {
	NewPauser(ctx context.Context, dir vmdir.Dir) (*qemu.Pauser, error)
}

// NewPauser returns a Pauser of v's machine; a backend that cannot pause
// is an error. The caller closes it (before Close of v).
func (v *VM) NewPauser(ctx context.Context) (Pauser, error) {
	pb, ok := v.backend.(pauserBackend)
	if !ok {
		return nil, fmt.Errorf("backend %q cannot pause guests", v.Backend)
	}
	return pb.NewPauser(ctx, v.Dir)
}

// Pause pauses the guest with an agent session that survives the pause:
// the agent client is replaced by one without keep-alives (which a paused
// guest cannot answer; a session that died while the guest slept would
// cost a reconnect at resume), connected and checked before the pause.
// Resume it, then SetIdentity.
func (v *VM) Pause(ctx context.Context, p Pauser) error {
	if err := p.Release(ctx, func() { _ = v.Agent.Close() }); err != nil {
		return err
	}
	agent := agentapi.NewPausableClient(v.Machine.DialAgent)
	v.Agent = agent
	v.onClose(func(context.Context) error { return agent.Close() })
	if _, err := agent.Health(ctx); err != nil {
		return fmt.Errorf("reconnect the guest agent: %w", err)
	}
	return p.Pause(ctx)
}

// HandoutIdentityTimeout bounds the identity call of a hand-out. A pooled
// guest is primed and answers in ~20 ms (a few hundred on a host loaded to
// 15-20); one that has not answered after this is stuck, and the claimer
// is better served by starting a guest of its own than by waiting on
// agentapi's 15 s call timeout.
const HandoutIdentityTimeout = 2 * time.Second

// SetIdentity gives a restored guest another identity (a pooled guest at
// hand-out: fresh RNG state, the clock now, the hostname of id, a new
// machine-id; the MAC of id when it has a NIC). It is the refresh a warm
// boot does after its restore, done again for the guest's new owner.
func (v *VM) SetIdentity(ctx context.Context, id string, network bool) error {
	req, err := NewIdentity(id, network, "")
	if err != nil {
		return err
	}
	resp, err := v.Agent.SetIdentityWithin(ctx, HandoutIdentityTimeout, req)
	if err != nil {
		return err
	}
	v.Health = resp.Health
	return nil
}
