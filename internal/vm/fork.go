package vm

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// Live fork (issue #14). A running guest is saved whole, RAM and devices,
// by its backend (vmm.LiveSaver) while its disks are copied at the instant
// it is paused; each fork is a new VM whose first boot is ForkBoot: the
// same device set restored from that state, so its processes (services,
// shells) continue where the source's were. Before the save the source's
// host lets go of its agent session when no call is in flight
// (agentapi.Client.Release) and holds its calls until the source runs
// again: the saved agent waits for a new host, and each fork's host
// connects at once, as to a warm-started guest. When a call was in flight
// the session is saved with it; every guest reopens its agent port when
// its host goes away (internal/agent/listener.go), so such a fork's
// restore waits until the restored agent dropped the source's session.
// Then the fork gets an identity of its own (RNG, clock, hostname,
// machine-id, MAC) before its host hands it to anyone; its workspace disk
// is already mounted (the copy matches the saved page cache), so unlike a
// warm start nothing is mounted.

// StartFork is the start mode of a fork's first boot.
const StartFork = "fork"

// ForkSource is a live-saved guest that forks are restored from.
type ForkSource struct {
	// State is the saved state (RAM and devices).
	State string `json:"state"`
	// Released: the saved agent had no host session (vmm.LiveSave).
	Released bool `json:"released,omitempty"`
	// Gate, when set, is the ForkGate the fork waits at once its state
	// is loaded, its guest still paused (forkgate.go).
	Gate string `json:"gate,omitempty"`
	// RAM, when set, is the saved guest's main RAM, which State then
	// lacks (ForkRAM): the fork maps it copy-on-write.
	RAM string `json:"ram,omitempty"`
	// RAMInode is the RAM file's inode: RAM is a path through the
	// caller's descriptor table, which names another file once the
	// caller closed this one (openForkRAM).
	RAMInode uint64 `json:"ram_inode,omitempty"`
	// First: the saved agent answers a fork's identity in a first-call
	// frame (agentapi.Health.FirstInherited), which forkIdentity then
	// sends; else, or when the frame fails, the JSON identity call.
	First bool `json:"first,omitempty"`
}

// SaveLive saves the running v to state (see vmm.LiveSaver), its agent
// session let go of first when no call is in flight: whilePaused runs at
// the instant the saved RAM describes, the guest then resumes, and v's
// agent calls (held meanwhile) dial it again.
func (v *VM) SaveLive(ctx context.Context, state *os.File, whilePaused func(context.Context) error) (vmm.LiveSave, error) {
	ls, ok := v.backend.(vmm.LiveSaver)
	if !ok || !v.Features.MemorySnapshot {
		return vmm.LiveSave{}, errdefs.New(errdefs.ErrFailedPrecondition, "fork workspaces that run on the qemu backend",
			"backend %q cannot save a running guest", v.Backend)
	}
	resume := func() {}
	defer func() { resume() }()
	saved, err := ls.SaveLive(ctx, v.Dir, state, vmm.LiveSaveHooks{
		Release: func() bool {
			var ok bool
			ok, resume = v.Agent.Release()
			return ok
		},
		WhilePaused: whilePaused,
	})
	if saved.Released {
		// The resumed source's agent waits for a host, polling its port
		// (every 2 ms: under TCG twice an idle guest's CPU, taken from the
		// forks restoring beside it, ~90 ms/s more measured here) until
		// its host dials again: it does so now, not at its next call.
		resume()
		go func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reconnectTimeout)
			defer cancel()
			_ = v.Agent.Connect(cctx)
		}()
	}
	return saved, err
}

// reconnectTimeout bounds the source's reconnection after a live save.
const reconnectTimeout = 10 * time.Second

// Names of the fork-boot steps.
const (
	StepRestoreFork  = "restore fork"
	StepForkIdentity = "fork identity"
)

// ForkBoot returns the steps that start a fork of src: ColdBoot with the
// VMM restored instead of booted, the agent reached without a readiness
// round trip, a new identity as the first call, and then the fork
// yielding the host's cores to its siblings (forkyield.go).
func ForkBoot(src ForkSource) Steps {
	return ColdBoot().
		Swap(StepStartVMM, func(ctx context.Context, d Deps, c Config, v *VM) error {
			t := time.Now()
			err := restoreFork(ctx, d, c, v, src)
			d.Logger.Info("fork restored", "ms", time.Since(t).Milliseconds(), "vmm_cpu_ms", vmmCPUms(v), "err", err)
			return err
		}).
		Swap(StepConnectAgent, func(_ context.Context, _ Deps, _ Config, v *VM) error {
			v.Agent = agentapi.NewClient(v.Machine.DialAgent)
			v.onClose(func(context.Context) error { return v.Agent.Close() })
			return nil
		}).
		InsertAfter(StepConnectAgent, Step{StepForkIdentity, func(ctx context.Context, d Deps, c Config, v *VM) error {
			t := time.Now()
			err := forkIdentity(ctx, d, c, v, src.First)
			d.Logger.Info("fork identity", "ms", time.Since(t).Milliseconds(), "vmm_cpu_ms", vmmCPUms(v), "err", err)
			return err
		}}).
		InsertAfter(StepForkIdentity, Step{StepForkYield, forkYield})
}

func restoreFork(ctx context.Context, d Deps, c Config, v *VM, src ForkSource) error {
	v.warm.state = src.State
	spec := v.spec(c)
	spec.RestoreLive = !src.Released
	spec.RestoreFork = true // its disks are as the saved guest saw them
	spec.HugePages = true   // ten restores at once: see vmm.Spec.HugePages
	if src.RAM != "" {
		// Mapped through this process's own descriptor of the file its
		// caller made (forkram.go), never through the caller's path again.
		ram, err := openForkRAM(src)
		if err != nil {
			return fmt.Errorf("restore the fork: %w", err)
		}
		defer ram.Close()
		spec.RestoreRAM = "/proc/self/fd/" + strconv.Itoa(int(ram.Fd()))
	}
	if src.Gate != "" {
		t := time.Now()
		spec.Hold = func(ctx context.Context, m vmm.Machine) {
			// The timeline of scripts/bench-fork.sh: loaded (QEMU started
			// and the state read), then how long the gate held it.
			d.Logger.Info("fork loaded", "ms", time.Since(t).Milliseconds(), "vmm_cpu_ms", pidCPUms(m.Pid()))
			w := time.Now()
			held, ok, err := waitForkGate(ctx, src.Gate)
			v.holdGate(held)
			d.Logger.Info("fork released", "wait_ms", time.Since(w).Milliseconds(), "by_gate", ok, "err", err)
		}
	}
	if err := v.start(ctx, spec); err != nil {
		return fmt.Errorf("restore the fork: %w", err)
	}
	return nil
}

// forkIdentity gives the fork its own identity; its answer is also the
// guest's health. The workspace is mounted already (MountWorkspace off).
// With first, the identity and the question what the fork runs go in
// one first-call frame (agentapi/first_inherited.go): the restored guest
// runs no yamux, net/http or encoding/json code for them, which under
// TCG it would translate afresh (most of a fork's CPU to its identity).
func forkIdentity(ctx context.Context, d Deps, c Config, v *VM, first bool) error {
	req, err := NewIdentity(v.ID, c.Network, "")
	if err != nil {
		return err
	}
	req.Inherited = true // what the fork runs comes back with it
	ctx, cancel := context.WithTimeout(ctx, 2*restoreAgentTimeout)
	defer cancel()
	go func() {
		select {
		case <-v.Machine.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	var resp agentapi.IdentityResponse
	if first {
		resp, err = v.Agent.First(ctx, agentapi.CallTimeout, req, nil)
		if err == nil {
			v.Health, v.Inherited = resp.Health, resp.Inherited
			v.Start = StartFork
			return nil
		}
		if ctx.Err() != nil {
			return forkIdentityFailed(v, err)
		}
		// Refused or not understood: the JSON call below, as for an
		// older agent (the identity is idempotent without a mount).
		d.Logger.Info("fork identity: first-call frame failed, asking over HTTP", "err", err)
	}
	// A restored guest that answers late is not a dead one: the call is
	// asked again (it is idempotent without a mount) until the deadline.
	for {
		if resp, err = v.Agent.SetIdentity(ctx, req); err == nil || ctx.Err() != nil || errdefs.Category(err) != errdefs.ErrUnavailable {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err != nil {
		return forkIdentityFailed(v, err)
	}
	v.Health, v.Inherited = resp.Health, resp.Inherited
	v.Start = StartFork
	return nil
}

// forkIdentityFailed explains a fork's failed identity call. When its VMM
// exited meanwhile (the call then ends "context canceled", the exit having
// cut it short), that exit is the failure: it is said with the console's
// last lines, as a cold boot's connectAgent does, instead of the bare
// cancellation, which read like the host giving up.
func forkIdentityFailed(v *VM, err error) error {
	select {
	case <-v.Machine.Done():
		return errdefs.New(errdefs.ErrUnavailable, "the saved state may be bad; fork the source again (see "+v.Dir.Path(vmdir.ConsoleLog)+")",
			"the fork's guest exited after its restore (%s): %s", qemuExit(v.Machine), consoleTail(v.Dir.Path(vmdir.ConsoleLog)))
	default:
	}
	return errdefs.Wrap(errdefs.ErrUnavailable, err, "", "give the fork its own identity")
}

// vmmCPUms is the CPU time (user and system) v's VMM process has used so
// far, -1 when unknown: logged at each fork step, because under TCG a
// restored guest's cost is the CPU its VMM spends (scripts/bench-fork.sh).
func vmmCPUms(v *VM) int64 {
	if v.Machine == nil {
		return -1
	}
	return pidCPUms(v.Machine.Pid())
}

// pidCPUms is the CPU time the process pid has used so far (vmmCPUms).
func pidCPUms(pid int) int64 {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	// Fields after the command name's closing parenthesis: utime and
	// stime are the 12th and 13th, in clock ticks (USER_HZ, 100 on Linux).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return (u + st) * 10
}
