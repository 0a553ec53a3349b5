package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// Memory snapshots (issue #14). Saving: migration of the paused guest,
// RAM included, to a descriptor handed over with getfd (zero pages travel
// as a flag, so the file holds only the guest's non-zero memory).
// Restoring: QEMU started with -incoming on a descriptor of that file that
// pyro opened read-only (launch.go); the RAM lands in QEMU's own anonymous
// memory.
//
// Why not map a shared RAM file copy-on-write (memory-backend-file with
// share=off and the x-ignore-shared capability), which restores without
// reading the RAM: QEMU 7.2 opens that file read-write whatever share
// says, so every restored QEMU would hold a writable handle on the golden
// memory, and a compromised one could rewrite what every later restore
// (and every running clone's not yet copied pages) sees. Its readonly=on
// maps the RAM read-only, which no guest survives; rom=off, which fixes
// that, is QEMU 8.2. Measured on QEMU 7.2 / TCG for a 1 GiB debian:12
// guest with 126 MiB of non-zero memory: the read adds tens of
// milliseconds to a restore (see scripts/bench-warm.sh). Forks do map
// their RAM copy-on-write (forkram.go): from a memfd sealed against
// writes, which no QEMU can change whatever it opens it as.

var _ vmm.Snapshotter = (*Backend)(nil)

// restoreTimeout bounds a restore from QEMU's start to a running guest.
const restoreTimeout = 15 * time.Second

// holdTimeout is the part of a restore's bound left to its spec's Hold
// (vm.ForkGate bounds its own wait well within it).
const holdTimeout = 60 * time.Second

// migrationName is the name the state descriptor gets in QEMU (getfd).
const migrationName = "pyro-state"

// Save implements vmm.Snapshotter.
func (b *Backend) Save(ctx context.Context, dir vmdir.Dir, state *os.File, release func()) error {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	q.dropEvents()
	release()
	// The guest agent sees its host go away and closes the port: from then
	// on the guest waits for a new host, which is the state to save.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = q.waitEvent(wctx, "VSERPORT_CHANGE", agentPortChanged)
	cancel()
	if err != nil {
		return fmt.Errorf("guest did not release the agent port: %w", err)
	}
	// The default bandwidth cap makes saving several times slower.
	if _, err := q.call(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return err
	}
	if _, err := q.call(ctx, "getfd", map[string]any{"fdname": migrationName}, state); err != nil {
		return err
	}
	// The guest is paused for the whole save (as a fork's source is,
	// fork.go SaveLive): a migration of a running TCG guest (QEMU 7.2)
	// could keep RAM older than the saved vCPU, and every guest restored
	// from such a state crashed soon after. A paused guest writes no RAM.
	// The state then loads paused, and restore starts it (cont). The
	// snapshot's guest is stopped after the save, so it is not resumed.
	if _, err := q.call(ctx, "stop", nil, nil); err != nil {
		return err
	}
	if _, err := q.call(ctx, "migrate", map[string]any{"uri": "fd:" + migrationName}, nil); err != nil {
		return err
	}
	return q.poll(ctx, "query-migrate", func(r json.RawMessage) (bool, error) {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(r, &st); err != nil {
			return false, err
		}
		switch st.Status {
		case "completed":
			return true, nil
		case "failed", "cancelled":
			return false, fmt.Errorf("save guest state: migration %s: %s", st.Status, st.ErrorDesc)
		}
		return false, nil
	})
}

// restore waits until a machine started with its saved state (-incoming,
// launch.go) has loaded it and runs. A state QEMU refuses (other version,
// other device set, damaged) makes QEMU exit or report failure: either
// way an error here, never a hung guest.
func restore(ctx context.Context, spec vmm.Spec, m vmm.Machine, clock *stepClock) error {
	timeout := restoreTimeout
	if spec.RestoreLive {
		timeout += agentReopenTimeout // fork.go: the guest must run a while
	}
	if spec.Hold != nil {
		timeout += holdTimeout // the other forks load meanwhile
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A QEMU that exits (it refused the state) ends the wait at once.
	go func() {
		select {
		case <-m.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	// QEMU answers its monitor once the load is over (the load holds
	// its main loop), so this handshake overlaps the load.
	q, err := dialQMP(ctx, spec.Dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	clock.mark("qmp+load")
	held := false
	err = q.poll(ctx, "query-status", func(r json.RawMessage) (bool, error) {
		var st struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(r, &st); err != nil {
			return false, err
		}
		switch st.Status {
		case "running":
			return true, nil
		case "paused":
			// A state saved from a stopped guest (every save pauses the
			// guest first) loads paused: once the load is complete, it
			// is started here. (Tried: saving without the run state,
			// migration.store-global-state=off, so that QEMU starts the
			// guest itself at the end of the load: the identity call
			// after it took ~80 ms longer in 6 of 6 paired runs.)
			if loaded, err := incomingDone(ctx, q); err != nil || !loaded {
				return false, err
			}
			clock.mark("load")
			if spec.Hold != nil && !held {
				held = true
				spec.Hold(ctx, m)
				clock.mark("hold")
			}
			// A cont answered after the load is the guest running
			// (QEMU starts it before replying): no further poll, which
			// cost a 3 ms pause and another round trip.
			_, err := q.call(ctx, "cont", nil, nil)
			clock.mark("cont")
			return err == nil, err
		case "inmigrate", "prelaunch", "restore-vm":
			return false, nil
		}
		return false, fmt.Errorf("guest is %q after loading its state", st.Status)
	})
	if err != nil {
		return err
	}
	clock.mark("running")
	if spec.RestoreLive { // a fork (fork.go)
		if err := waitAgentReopened(ctx, q); err != nil {
			return err
		}
	}
	if spec.WorkspaceDisk != "" && !spec.RestoreFork && !spec.RestoreSameDisks {
		// The snapshot's guest saw a placeholder disk; a resize to the real
		// disk's size (even the same) makes QEMU tell the guest to re-read
		// its capacity. A fork's guest saw this disk (vmm.Spec.RestoreFork), a
		// mounted-workspace snapshot's these sizes (RestoreSameDisks).
		st, err := os.Stat(spec.WorkspaceDisk)
		if err != nil {
			return err
		}
		if _, err := q.call(ctx, "block_resize", map[string]any{"device": "workspace", "size": st.Size()}, nil); err != nil {
			return err
		}
		clock.mark("resize")
	}
	return nil
}

// SnapshotIdentity says which QEMU saves and restores: a snapshot from
// another binary (another version) or accelerator is not used. The
// binary's size and modification time change with every upgrade, and
// reading them costs no process start.
func (b *Backend) SnapshotIdentity() string {
	id := b.binary + " " + b.accel
	if st, err := os.Stat(b.binary); err == nil {
		id += fmt.Sprintf(" %d %d", st.Size(), st.ModTime().UnixNano())
	}
	return id
}

// incomingDone reports whether QEMU finished loading the incoming state.
func incomingDone(ctx context.Context, q *qmp) (bool, error) {
	r, err := q.call(ctx, "query-migrate", nil, nil)
	if err != nil {
		return false, err
	}
	var m struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(r, &m); err != nil {
		return false, fmt.Errorf("qmp query-migrate: %w", err)
	}
	return m.Status == "completed", nil
}
