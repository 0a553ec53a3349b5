package vm

import (
	"context"
	"net"
	"os"
	"time"

	"github.com/pyro-mcp/pyro/internal/idleprio"
)

// A fork that has its identity yields the host's cores to its siblings
// still restoring (issue #14). On 2 cores, ten forks of a debian:12
// workspace spent ~2.8 s of their ~5.3 s of QEMU CPU idling after their
// identity while the others restored: an idle TCG guest still burns
// ~80-100 ms of CPU a second (its kernel's tick), and that CPU came out
// of the restores the fork call waits for. So once its identity is set,
// a fork's QEMU runs under SCHED_IDLE (internal/idleprio) until every
// fork's start returned: it then only gets a core nobody else wants, its
// guest timers fire late, its clock does not jump (unlike pausing it).
//
// The connection over which the fork gate let the fork go stays open
// until every fork's start returned (ForkGate): its close, for whatever
// reason (all forks run, the fork call failed or its process died), puts
// the QEMU back. So does the fork's own bound (forkGateWait), and the
// VM's close. A QEMU whose priority this process could not raise again
// is never lowered (idleprio.Lower refuses).

// StepForkYield is the fork-boot step that lowers the fork's VMM.
const StepForkYield = "fork yield"

// yieldPid is the process a fork lowers: its VMM, never this process
// itself (an in-process VMM, as in tests, serves the agent from the
// supervisor's own threads).
func yieldPid(v *VM) int {
	if v.Machine == nil || v.Machine.Pid() == os.Getpid() {
		return 0
	}
	return v.Machine.Pid()
}

// holdGate keeps the gate's connection c (nil: none) for the yield step;
// closed with v, or by the yield once the fork call ends.
func (v *VM) holdGate(c net.Conn) {
	if c == nil {
		return
	}
	v.mu.Lock()
	v.gateConn = c
	v.mu.Unlock()
	v.onClose(func(context.Context) error {
		_ = c.Close() // also ends a yield under way (it then restores)
		return nil
	})
}

// forkYield lowers the fork's VMM until the gate's connection closes
// (every fork runs), forkGateWait passes or the VMM exits, then puts it
// back. Any failure only costs speed: the fork runs normally.
func forkYield(_ context.Context, d Deps, _ Config, v *VM) error {
	v.mu.Lock()
	c := v.gateConn
	v.gateConn = nil
	v.mu.Unlock()
	pid := yieldPid(v)
	if c == nil || pid <= 0 {
		return nil
	}
	low, err := idleprio.Lower(pid)
	if err != nil {
		d.Logger.Info("fork yield", "err", err)
		return nil
	}
	bound := forkGateWait
	go func() {
		t, cpu := time.Now(), pidCPUms(pid)
		waitClosed(c, bound, v.Machine.Done())
		// The CPU its QEMU still took while lowered, for
		// scripts/bench-fork.sh.
		used := pidCPUms(pid) - cpu
		err := low.Restore()
		d.Logger.Info("fork yielded", "ms", time.Since(t).Milliseconds(), "vmm_cpu_ms", used, "err", err)
	}()
	return nil
}

// waitClosed returns once c is closed (by its peer or here), after
// bound, or once exited is closed. Nothing read from c is kept.
func waitClosed(c net.Conn, bound time.Duration, exited <-chan struct{}) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(bound))
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-exited:
			_ = c.SetReadDeadline(time.Now())
		case <-stop:
		}
	}()
	var b [64]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			return // closed, deadline, or exited
		}
	}
}
