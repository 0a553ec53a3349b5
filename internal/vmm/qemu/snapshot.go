package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// Memory snapshots (issue #14). Guest RAM lives in a file
// (memory-backend-file). Saving: the guest runs with the file shared, so
// the file is the RAM; migration with the x-ignore-shared capability then
// writes only the device state (~60 kB) to a descriptor handed over with
// getfd. Restoring: the same file mapped private (copy-on-write, so no
// clone ever writes it), QEMU started with -incoming defer and fed the
// state over QMP. QEMU 7.2 has no migration.x-ignore-shared global
// property, so the capability is set over QMP on both sides.

var _ vmm.Snapshotter = (*Backend)(nil)

// restoreTimeout bounds a restore from QEMU's start to a running guest.
const restoreTimeout = 15 * time.Second

// migrationName is the name the state descriptor gets in QEMU (getfd).
const migrationName = "pyro-state"

func setIgnoreShared(ctx context.Context, q *qmp) error {
	_, err := q.call(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}, nil)
	return err
}

// Save implements vmm.Snapshotter.
func (b *Backend) Save(ctx context.Context, dir vmdir.Dir, state *os.File, release func()) error {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	release()
	// The guest agent sees its host go away and closes the port: from then
	// on the guest waits for a new host, which is the state to save.
	closed := func(d json.RawMessage) bool {
		var ev struct {
			ID   string `json:"id"`
			Open bool   `json:"open"`
		}
		return json.Unmarshal(d, &ev) == nil && ev.ID == agentPortID && !ev.Open
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = q.waitEvent(wctx, "VSERPORT_CHANGE", closed)
	cancel()
	if err != nil {
		return fmt.Errorf("guest did not release the agent port: %w", err)
	}
	if err := setIgnoreShared(ctx, q); err != nil {
		return err
	}
	// The default bandwidth cap makes saving several times slower.
	if _, err := q.call(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return err
	}
	if _, err := q.call(ctx, "getfd", map[string]any{"fdname": migrationName}, state); err != nil {
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

// restore feeds a machine started with -incoming defer its saved device
// state and waits until the guest runs. A state QEMU refuses (other
// version, other device set, damaged) makes QEMU exit or report failure:
// either way an error here, never a hung guest.
func restore(ctx context.Context, spec vmm.Spec, m vmm.Machine) error {
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	// A QEMU that exits (it refused the state) ends the wait at once.
	go func() {
		select {
		case <-m.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	f, err := os.Open(spec.RestoreState)
	if err != nil {
		return err
	}
	defer f.Close()
	q, err := dialQMP(ctx, spec.Dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	if err := setIgnoreShared(ctx, q); err != nil {
		return err
	}
	if _, err := q.call(ctx, "getfd", map[string]any{"fdname": migrationName}, f); err != nil {
		return err
	}
	if _, err := q.call(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + migrationName}, nil); err != nil {
		return err
	}
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
		case "inmigrate", "paused", "prelaunch", "restore-vm":
			return false, nil
		}
		return false, fmt.Errorf("guest is %q after loading its state", st.Status)
	})
	if err != nil {
		return err
	}
	if spec.WorkspaceDisk != "" {
		// The snapshot's guest saw a placeholder disk; a resize to the real
		// disk's size (even the same) makes QEMU tell the guest to re-read
		// its capacity.
		st, err := os.Stat(spec.WorkspaceDisk)
		if err != nil {
			return err
		}
		if _, err := q.call(ctx, "block_resize", map[string]any{"device": "workspace", "size": st.Size()}, nil); err != nil {
			return err
		}
	}
	return nil
}

// ownRAMFile gives the memory file to the account QEMU runs as (nil: pyro's
// own user), so QEMU can re-open it read-write.
func ownRAMFile(path string, acct *Account) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("stat %s", path)
	}
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
	if acct != nil {
		uid, gid = acct.UID, acct.GID
	}
	if sys.Uid == uid && sys.Gid == gid {
		return nil
	}
	if err := os.Chown(path, int(uid), int(gid)); err != nil {
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "", "give the memory file to the qemu account")
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
