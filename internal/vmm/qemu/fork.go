package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// Save for fork (vmm.LiveSaver): the same migration as Save (RAM
// included, zero pages as a flag) of a running guest, paused ("stop")
// for the whole migration, not only for its last dirty pages (see
// SaveLive: a live migration under TCG lost guest writes), and left
// paused ("postmigrate") for the caller's disk copies; then "cont"
// resumes it (and takes its disks back).
//
// First the caller lets go of its agent session when it can (no call in
// flight, hooks.Release), and the save waits until the guest agent closed
// its port, as Save does for a golden snapshot: the saved agent is then
// waiting for a new host, and each fork's host connects at once. A caller
// that keeps its session (a call in flight) is saved with it, and each
// fork's restore waits until its agent dropped it (waitAgentReopened):
// about a second more per fork, because QEMU passes on one port event a
// second.

var _ vmm.LiveSaver = (*Backend)(nil)

// liveSaveTimeout bounds a live save (a guest dirtying RAM faster than it
// can be written would otherwise never finish).
const liveSaveTimeout = 2 * time.Minute

// resumeTimeout bounds the resume that follows every save.
const resumeTimeout = 10 * time.Second

// releaseTimeout bounds the wait for the guest agent to close its port
// after its host let go (a variable for tests). The guest notices at once
// when it runs at all; QEMU may hold the event back up to a second.
var releaseTimeout = 10 * time.Second

// SaveLive implements vmm.LiveSaver.
func (b *Backend) SaveLive(ctx context.Context, dir vmdir.Dir, state *os.File, hooks vmm.LiveSaveHooks) (out vmm.LiveSave, err error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, liveSaveTimeout)
	defer cancel()
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return out, err
	}
	defer q.Close()
	// The default bandwidth cap makes saving several times slower.
	if _, err := q.call(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return out, err
	}
	if _, err := q.call(ctx, "getfd", map[string]any{"fdname": migrationName}, state); err != nil {
		return out, err
	}
	if hooks.Release != nil {
		if out.Released, out.ReleaseMS, err = release(ctx, q, hooks.Release); err != nil {
			return out, err
		}
	}
	// From here on the guest may be paused: it is resumed on every path.
	stopped := time.Now()
	defer func() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), resumeTimeout)
		defer rcancel()
		if rerr := resume(rctx, q); rerr != nil {
			err = errors.Join(err, fmt.Errorf("resume the source: %w", rerr))
		}
		out.PausedMS = time.Since(stopped).Milliseconds()
		out.TotalMS = time.Since(start).Milliseconds()
	}()
	// The guest is paused for the whole save, not only for its last dirty
	// pages: under TCG a live migration here lost guest writes made while
	// it ran (QEMU 7.2), so the saved RAM could be older than the saved
	// vCPU. Seen in a 10-way fork: every fork's kernel oopsed at once in
	// the idle task (fixup_vdso_exception, "Attempted to kill the idle
	// task!"), its vCPU in user mode (user CR3 and FS) while the saved
	// per-cpu current_task still named swapper, and each QEMU exited
	// (-no-reboot) ~50 ms after RESUME; about 1 save in 4-5. A paused
	// guest writes no RAM, so the state is one instant whatever QEMU
	// tracks.
	if _, err = q.call(ctx, "stop", nil, nil); err != nil {
		return out, err
	}
	if _, err = q.call(ctx, "migrate", map[string]any{"uri": "fd:" + migrationName}, nil); err != nil {
		return out, err
	}
	err = q.poll(ctx, "query-migrate", func(r json.RawMessage) (bool, error) {
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
	if err != nil {
		_, _ = q.call(context.WithoutCancel(ctx), "migrate_cancel", nil, nil)
		return out, err
	}
	if hooks.WhilePaused != nil {
		err = hooks.WhilePaused(ctx)
	}
	if fi, serr := state.Stat(); serr == nil {
		out.StateBytes = fi.Size()
	}
	return out, err
}

// release has the caller let go of its agent session and, when it did,
// waits until the guest agent closed its port (any change of it: QEMU
// may report the close and the agent's reopen as one "open" a second
// later, agentPortChanged). A guest that does not is not saved: its forks
// could not tell whether their agent still holds the session.
func release(ctx context.Context, q *qmp, let func() bool) (released bool, ms int64, err error) {
	q.dropEvents()
	t := time.Now()
	if !let() {
		return false, 0, nil
	}
	wctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	if err := q.waitEvent(wctx, "VSERPORT_CHANGE", agentPortChanged); err != nil {
		return false, 0, fmt.Errorf("the guest agent did not let go of its port: %w", err)
	}
	return true, time.Since(t).Milliseconds(), nil
}

// resume continues a guest a save paused (postmigrate, or paused by a
// failed migration); a running guest is left alone.
func resume(ctx context.Context, q *qmp) error {
	r, err := q.call(ctx, "query-status", nil, nil)
	if err != nil {
		return err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(r, &st); err != nil {
		return err
	}
	if st.Status == "running" {
		return nil
	}
	_, err = q.call(ctx, "cont", nil, nil)
	return err
}

// agentReopenTimeout bounds the wait for a restored guest's agent to drop
// the saved host session and reopen its port: the guest has to run for
// that, and TCG guests on a loaded host run slowly (a few seconds at a
// load of 20 on 2 cores).
const agentReopenTimeout = 45 * time.Second

// waitAgentReopened waits, after a live state was loaded, until the guest
// agent dropped the source's host session. Loading the state reports the
// port as the guest had it (open, with the source's host session), then
// tells the guest its host went away: the agent ends that session and
// closes the port (then opens it again and waits for the next host,
// internal/agent/listener.go). Only after that close may a new host
// connect: bytes sent earlier would reach the old session; bytes sent
// after it are kept until the agent reads them.
//
// QEMU sends at most one VSERPORT_CHANGE a second per port and drops all
// but the last of the changes in between, so the agent's close and reopen
// may arrive as a single "open" a second after the load's own "open"
// event. Either a "closed" event or a second "open" one thus means the
// guest closed the port since the load.
func waitAgentReopened(ctx context.Context, q *qmp) error {
	ctx, cancel := context.WithTimeout(ctx, agentReopenTimeout)
	defer cancel()
	opens := 0
	err := q.waitEvent(ctx, "VSERPORT_CHANGE", func(d json.RawMessage) bool {
		var ev struct {
			ID   string `json:"id"`
			Open bool   `json:"open"`
		}
		if json.Unmarshal(d, &ev) != nil || ev.ID != agentPortID {
			return false
		}
		if !ev.Open {
			return true
		}
		opens++
		return opens >= 2
	})
	if err != nil {
		return fmt.Errorf("the restored guest's agent did not drop its old session: %w", err)
	}
	return nil
}

// agentPortChanged matches any change of the agent port after the host
// let go of a guest whose agent had the port open: the agent closes it
// and opens it again at once, and QEMU, which passes on at most one
// VSERPORT_CHANGE a second per port (the last), may report the pair as a
// single "open". Events read before the host let go must be dropped first
// (qmp.dropEvents).
func agentPortChanged(d json.RawMessage) bool {
	var ev struct {
		ID string `json:"id"`
	}
	return json.Unmarshal(d, &ev) == nil && ev.ID == agentPortID
}
