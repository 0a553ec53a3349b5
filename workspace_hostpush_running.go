package pyro

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/pyro-mcp/pyro/internal/hostwrite"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Sync push into a RUNNING quiet workspace, on the host (issue #15). A
// push through the guest is bound by the guest's page cache and ext4
// under TCG (~10 s for 196 MiB / 1,000 files); the stopped workspace's
// host path (workspace_hostpush.go) writes the same tree in ~1 s. When
// nothing in the guest holds /workspace, the running workspace takes the
// same path:
//
//  1. under the layer lock, the agent syncs and unmounts /workspace and
//     its upper disk (agentapi.ReleaseWorkspace; EBUSY - a service, shell,
//     job or process with its cwd or a file there - or any failure: the
//     push goes through the guest as before). No guest write reaches the
//     upper disk from now on;
//  2. the host writes the new raw root layer exactly as for a stopped
//     workspace (writePushLayer: the upper chain read as a raw image, the
//     tree written by the confined debugfs);
//  3. the pivot is recorded, the new layer named the top, and QEMU
//     switches the running disk to it (qemu.PivotTop: blockdev-add, then a
//     blockdev-mirror with sync "none" and job-complete); the record goes
//     once QEMU says which node it writes (workspace.SettlePivot);
//  4. the agent drops the upper disk's cached blocks and mounts
//     /workspace again as at boot. The result says transfer "host".
//
// Crashes: a kill -9 of QEMU or the supervisor before 3 leaves the old
// top (the new layer is collected), after the top is named the new one
// (the next boot reads it; the old layer, which the released guest no
// longer wrote, holds nothing more). A kill of the pushing process
// leaves the guest to remount /workspace by itself (after releaseFor), on
// whichever layer QEMU writes; the pivot record makes the next layer
// operation or boot settle the top to that layer (chain_pivot.go).
// A workspace that takes checkpoints takes the push's checkpoint on the
// way (workspace_hostpush_checkpoint.go).

// releaseFor bounds how long the guest leaves /workspace released if this
// process dies (PYRO_PUSH_RELEASE_MS sets it, for tests of that case); the
// host writes only within the first three quarters of it.
func releaseFor() time.Duration {
	if ms, err := strconv.Atoi(os.Getenv("PYRO_PUSH_RELEASE_MS")); err == nil && ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	return 2 * time.Minute
}

// pivotFor bounds QEMU's switch (a few QMP calls).
const pivotFor = 30 * time.Second

// qemuPivot is QEMU's side of the switch (a seam for tests).
var qemuPivot = qemu.PivotTop

// pushHostRunning pushes the directory sourcePath into the running
// workspace at dest on the host. ok is false when this path does not
// serve: /workspace is as it was, and the caller pushes through the
// guest.
func (c *Client) pushHostRunning(ctx context.Context, dir vmdir.Dir, rec instance.Record, sourcePath, mode, dest string) (res SyncResult, ok bool, err error) {
	if mode != "directory" || !layered(rec) || os.Getenv("PYRO_HOST_PUSH") == "0" ||
		!chainable(dir) || !hostwrite.Confinable() {
		return res, false, nil
	}
	// The instance lock (taken before the layer lock, as a stopped push
	// takes them) keeps the guest from being restarted until the push is
	// over: a restart meanwhile (stop and start, reset, a command that
	// restarts a guest whose QEMU died) boots a guest with /workspace
	// mounted on the old top, whose disk the switch would then change
	// under it: what it wrote since is lost, its file system torn.
	t := newPhases(c.logger, "host push into the running workspace")
	iunlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return res, false, nil
	}
	defer iunlock()
	t.mark("instance_lock")
	if c.lc.Observe(ctx, dir, rec).State != instance.Running {
		return res, false, nil
	}
	t.mark("observe")
	abs, err := filepath.Abs(sourcePath)
	if err != nil {
		return res, false, nil
	}
	touchActivity(dir)
	unlock, err := lockLayers(ctx, dir)
	if err != nil {
		return res, false, nil
	}
	t.mark("layer_lock")
	ck := newPushCheckpoint(dir, rec, sourcePath, dest)
	if ck != nil {
		ck.expect, ck.pending, _ = checkpointsOf(dir).TakePending()
	}
	st, err := c.pushReleased(ctx, dir, rec, abs, dest, ck, t)
	unlock()
	if ck != nil && (err == nil || errors.As(err, new(errPushKept))) {
		c.tidyAfter(ctx, dir, rec) // after the layer lock went: it may tidy here
		t.mark("tidy")
	}
	defer t.done("workspace", rec.ID, "checkpoint", ck != nil, "listing", ck.source(), "err", err)
	if err != nil {
		if ctx.Err() != nil {
			return res, true, ctx.Err()
		}
		var keep errPushKept
		if errors.As(err, &keep) {
			return res, true, keep.err
		}
		c.logger.Debug("host push into the running workspace not served", "workspace", rec.ID, "err", err)
		return res, false, nil
	}
	c.recordEvent(dir, workspace.Event{Kind: workspace.EventSync, Path: dest, Target: abs, Count: st.Files, Bytes: st.Bytes})
	return SyncResult{WorkspaceID: rec.ID, SourcePath: abs, Mode: mode, Dest: dest, FileCount: st.Files, Bytes: st.Bytes, Transfer: TransferHost}, true, nil
}

// errPushKept: the push is in the workspace, but what follows it failed
// (the guest did not mount /workspace again): the caller must not push
// again through the guest.
type errPushKept struct{ err error }

func (e errPushKept) Error() string { return e.err.Error() }

// pushReleased does steps 1-4 above, taking the checkpoint ck on the way
// when set; the caller holds the layer lock. An error other than
// errPushKept leaves /workspace as it was, mounted, and ck not recorded.
func (c *Client) pushReleased(ctx context.Context, dir vmdir.Dir, rec instance.Record, src, dest string, ck *pushCheckpoint, t *phases) (hostwrite.Stats, error) {
	var st hostwrite.Stats
	l := layersOf(dir, rec)
	// A pivot another process left under way is settled before the top is
	// read (and so is a checkpoint's switch).
	top, err := resolveTop(ctx, dir, l)
	if err != nil {
		return st, err
	}
	old, err := l.Chain(top)
	if err != nil {
		return st, err
	}
	t.mark("resolve_top")
	agent := c.lc.Client(dir)
	defer agent.Close()
	// Once QEMU may have switched, the guest drops what it cached of the
	// old layer before it mounts /workspace again. The remount is asked
	// for even when the release call fails: a release whose answer was
	// lost (the call timed out while the guest synced, the connection
	// broke) may have happened, and would leave /workspace a read-only
	// placeholder for the push through the guest that follows. Remounting
	// a mounted /workspace changes nothing.
	mounted, switching := false, false
	defer func() {
		if !mounted {
			_ = agent.RemountWorkspace(context.WithoutCancel(ctx), switching)
		}
	}()
	t0 := time.Now()
	hold := releaseFor()
	if err := releaseWorkspace(ctx, agent, hold, ck); err != nil {
		return st, fmt.Errorf("release /workspace: %w", err)
	}
	released := time.Now()
	t.mark("release")
	if ck != nil {
		// The released top goes under an empty overlay: the checkpoint.
		if top, err = ck.freeze(ctx, dir, l); err != nil {
			return st, err
		}
		if old, err = l.Chain(top); err != nil {
			return st, err
		}
		t.mark("freeze_top")
	}
	// The old top as the guest left it: should QEMU write it after this
	// (the guest remounted it), a settle without QEMU sees it changed.
	size, mtime, blocks, err := l.Identity(top)
	if err != nil {
		return st, err
	}
	wctx, cancel := context.WithDeadline(ctx, released.Add(hold*3/4))
	defer cancel()
	var name string
	t.mark("identity")
	if st, err = writePushLayer(wctx, dir, rec, src, dest, &name, t); err != nil {
		return st, err
	}
	written := time.Now()
	if written.Sub(released) > hold*3/4 {
		_ = os.Remove(l.Path(name))
		return st, errors.New("the host write took longer than the guest's release")
	}
	if ck != nil {
		if err := ck.record(dir); err != nil {
			_ = os.Remove(l.Path(name))
			return st, err
		}
		t.mark("record")
		// Until the new layer is the one QEMU writes, the push may yet go
		// through the guest, which takes its own checkpoint.
		defer func() {
			if now, err := l.Top(); err != nil || now != name {
				ck.drop(dir)
			}
		}()
	}
	if err := l.SetPivot(workspace.Pivot{Layer: name, Parent: top, Size: size, Mtime: mtime, Blocks: blocks}); err != nil {
		_ = os.Remove(l.Path(name))
		return st, err
	}
	if err := l.SetTop(name); err != nil {
		_ = l.ClearPivot()
		_ = os.Remove(l.Path(name))
		return st, err
	}
	t.mark("name_top")
	paths := make([]string, len(old))
	for i, n := range old {
		paths[i] = l.Path(n)
	}
	switching = true
	// The switch ends well before the release does (counted from before
	// the release was asked for: the guest's own count starts later):
	// past it the guest remounts the old layer by itself, and a switch
	// after that would change the disk under its mounted /workspace. A
	// switch cut short leaves the old layer, as settlePivot then finds.
	pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), pivotFor)
	pctx, pcancel2 := context.WithDeadline(pctx, t0.Add(hold*7/8))
	defer pcancel2()
	perr := qemuPivot(pctx, dir, l.Path(name), paths)
	pcancel()
	t.mark("qemu_pivot")
	// QEMU's answer settles it, whatever the switch call said. Should it
	// not answer, the next layer operation asks again; either way the
	// guest mounts what QEMU serves, and a push through the guest
	// writes the same tree again (over itself, if it is there).
	if err := settlePivot(ctx, dir, l); err != nil {
		return st, fmt.Errorf("switch the workspace disk: %w", errors.Join(perr, err))
	}
	if now, err := l.Top(); err != nil || now != name {
		return st, fmt.Errorf("switch the workspace disk: %w", errors.Join(perr, err))
	}
	t.mark("settle")
	mounted = true
	if err := agent.RemountWorkspace(context.WithoutCancel(ctx), true); err != nil {
		return st, errPushKept{fmt.Errorf("the push is in the workspace, but the guest did not mount /workspace again (hint: restart the workspace): %w", err)}
	}
	t.mark("remount")
	// A next overlay made over the old top is of no use now.
	discardNext(ctx, dir, l, name)
	_ = l.GC(workspace.KeepLayers(string(dir)))
	t.mark("gc")
	return st, nil
}

// settlePivot settles a pivot left under way (workspace.SettlePivot),
// asking the running QEMU which layer it writes. The caller holds the
// layer lock.
func settlePivot(ctx context.Context, dir vmdir.Dir, l workspace.Layers) error {
	if _, ok := l.PivotUnderWay(); !ok {
		return nil
	}
	var live func() (string, error)
	if chainable(dir) {
		live = func() (string, error) {
			qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
			defer cancel()
			return qemuLiveNode(qctx, dir)
		}
	}
	_, err := l.SettlePivot(live)
	return err
}
