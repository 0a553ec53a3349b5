package pyro

import (
	"context"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/diskimg"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/hostwrite"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/tarutil"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Sync push into a stopped workspace, on the host (issue #15). Measured on
// a 2-core TCG host: a guest copies 196 MiB / 1,000 files into /workspace
// in 10-11 s (its page cache and ext4 under emulation; the transfer disk
// of workspace_push.go reaches ~9.5 s), debugfs writes the same tree into
// a local ext4 image in ~1 s. Writing through a qcow2 overlay served by
// qemu-storage-daemon's FUSE export took 9 s (one FUSE round trip per
// 4 KiB block debugfs writes), so the host path writes a raw image instead:
//
//  1. under the instance lock with no guest running, and the layer lock,
//     the upper layer is copied into a new raw root layer (a chain is
//     flattened first; what the upper holds is copied, sparse, up to
//     workspace.MaxHostPushCopy);
//  2. the source is staged privately (hard links where possible) and
//     hostwrite writes it into the copy's overlay directory with a confined
//     debugfs (the upper image is the guest's: hostile input);
//  3. only then the copy becomes the live top (atomic rename of the top
//     record), and layers nothing refers to any more are deleted.
//
// A kill at any point before 3 leaves the old top live and an unreachable
// layer file for GC. A host power loss too: the new layer is on stable
// storage (one fdatasync in hostwrite.Write, debugfs's own syncs being
// no-ops) before the top record naming it is renamed into place and its
// directory synced (Layers.SetTop), so after a crash the top is the old
// layer or the whole new one, never a layer whose blocks may be missing.
// The copy of step 1 leaves out the body of the upper's journal when the
// journal is empty (nothing to replay; the guest writes the body before it
// reads it), and the pre-checks ask each image once (diskimg.Probe). The result equals a push through the guest (owner
// root, permission bits including setuid/setgid/sticky, nanosecond
// modification times, symlinks as links, nothing followed) when every
// top-level entry of the push is new to /workspace: absent from the upper
// layer (no file, directory or whiteout) and from the baseline. Anything
// else - merging into an existing directory, replacing files, a running
// workspace (workspace_hostpush_running.go), an archive source, a name
// debugfs cannot take, a journal to replay, a damaged image - goes through
// the guest as before (errNotHere, notServed). A push the host path serves
// but cannot finish (the host's disk or the workspace disk full, a source
// written meanwhile) fails with its own error, the workspace unchanged.
//
// A stopped workspace that takes checkpoints takes the push's checkpoint
// without a guest: the old top is its layer (nothing writes it again), and
// its listing - which diff --since and bytes_changed compare with the
// guest's later listings - is read from the upper image on the host while
// debugfs writes the copy (workspace.ListUpper: the fields the guest's
// stat(2) reports, ~0.1-0.3 s for 1,000 files). Before, such a push started the
// workspace first (a boot, then the running push: 2.7x docker cp).
// A listing the host cannot make (over maxHostListed entries,
// workspace.MaxUpperDepth levels or MaxUpperPathBytes of paths, a damaged
// inode) leaves the push to the guest's path.

// pushHost pushes the directory sourcePath into the stopped workspace at
// dest on the host. ok is false when this path does not serve: nothing
// changed, and the caller pushes through the guest.
func (c *Client) pushHost(ctx context.Context, dir vmdir.Dir, rec instance.Record, sourcePath, mode, dest string) (res SyncResult, ok bool, err error) {
	if mode != "directory" || !layered(rec) || os.Getenv("PYRO_HOST_PUSH") == "0" {
		return res, false, nil
	}
	abs, err := filepath.Abs(sourcePath)
	if err != nil {
		return res, false, nil
	}
	t := newPhases(c.logger, "host push into the stopped workspace")
	ck := newPushCheckpoint(dir, rec, sourcePath, dest) // workspace_hostpush_checkpoint.go
	var st hostwrite.Stats
	stopped := false
	werr := c.lc.WhileStopped(ctx, dir, rec, func() error {
		stopped = true
		t.mark("instance_lock")
		unlock, err := lockLayers(ctx, dir)
		if err != nil {
			return err
		}
		defer unlock()
		t.mark("layer_lock")
		st, err = pushIntoLayers(ctx, dir, rec, abs, dest, ck, t)
		return err
	})
	if ck != nil && werr == nil {
		c.tidyAfter(ctx, dir, rec) // after the layer lock went: it tidies here
		t.mark("tidy")
	}
	defer t.done("workspace", rec.ID, "checkpoint", ck != nil, "listing", ck.source(), "err", werr)
	if werr != nil {
		if ctx.Err() != nil {
			return res, true, ctx.Err()
		}
		// Not stopped, or a push this path does not serve: the guest's
		// path takes it. Any other failure is the push's own (the host's
		// disk full, the workspace disk full, a source that changed while
		// it was staged): the guest's path, which for a stopped workspace
		// only says "start it first", would hide it.
		if !stopped || notServed(werr) {
			c.logger.Debug("host push not served", "workspace", rec.ID, "err", werr)
			return res, false, nil
		}
		return res, true, werr
	}
	c.recordEvent(dir, workspace.Event{Kind: workspace.EventSync, Path: dest, Target: abs, Count: st.Files, Bytes: st.Bytes})
	return SyncResult{WorkspaceID: rec.ID, SourcePath: abs, Mode: mode, Dest: dest, FileCount: st.Files, Bytes: st.Bytes, Transfer: TransferHost}, true, nil
}

// errNotHere: the host path does not serve this push.
var errNotHere = errors.New("push through the guest")

// notServed reports whether err says that the host path does not serve a
// push (the guest's path does): errNotHere, a tree or a host the confined
// writer cannot take, an upper layer over the copy cap.
func notServed(err error) bool {
	return errors.Is(err, errNotHere) || errors.Is(err, hostwrite.ErrUnsupported) ||
		errors.Is(err, hostwrite.ErrUnconfinable) || errors.Is(err, workspace.ErrOverCopyCap)
}

// hostFull names a failure to write the host's disk for what it is.
func hostFull(err error, what string) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "free space on the host; the workspace is unchanged", "%s", what)
	}
	return err
}

// pushIntoLayers does steps 1-3 above, taking the checkpoint ck on the way
// when set (recordStopped); the caller holds the instance and layer
// locks.
func pushIntoLayers(ctx context.Context, dir vmdir.Dir, rec instance.Record, src, dest string, ck *pushCheckpoint, t *phases) (hostwrite.Stats, error) {
	var name string
	l := layersOf(dir, rec)
	// A pivot a killed running push left under way is settled first, as
	// the next boot would (no QEMU runs: workspace_hostpush_running.go);
	// the top it names may be a layer QEMU never switched to.
	if _, err := l.SettlePivot(nil); err != nil {
		return hostwrite.Stats{}, err
	}
	t.mark("settle")
	var list func(context.Context, string) error
	if ck != nil {
		if !l.Chained() {
			return hostwrite.Stats{}, errNotHere
		}
		// A quiet report kept from before describes a guest the push
		// changes; the next checkpoint asks the guest.
		_ = checkpointsOf(dir).ClearPending()
		list = ck.listHost
	}
	st, unstage, err := writeLayer(ctx, dir, rec, src, dest, &name, list, t)
	// The staging's removal (a link or copy per file) runs beside naming
	// the layer and collecting the old one.
	done := make(chan struct{})
	go func() { unstage(); close(done) }()
	defer func() { <-done }()
	if err != nil {
		return st, err
	}
	if ck != nil {
		if err := ck.recordStopped(dir, l); err != nil {
			_ = os.Remove(l.Path(name))
			return st, hostFull(err, "record the push's checkpoint")
		}
		t.mark("record")
	}
	if err := l.SetTop(name); err != nil {
		_ = os.Remove(l.Path(name))
		if ck != nil {
			ck.drop(dir)
		}
		return st, hostFull(err, "name the new upper layer")
	}
	t.mark("name_top")
	if ck != nil {
		discardNext(ctx, dir, l, name) // made over the old top
	}
	_ = l.GC(workspace.KeepLayers(string(dir)))
	t.mark("gc")
	return st, nil
}

// writePushLayer does steps 1-2 above: it sets *layer to the new layer,
// whole and synced, that nothing refers to yet (the caller names it the
// top, or removes it). The caller holds the layer lock and no guest writes the
// upper layer (stopped, or /workspace released: workspace_hostpush_running.go).
func writePushLayer(ctx context.Context, dir vmdir.Dir, rec instance.Record, src, dest string, layer *string, t *phases) (hostwrite.Stats, error) {
	st, unstage, err := writeLayer(ctx, dir, rec, src, dest, layer, nil, t)
	unstage()
	t.mark("unstage")
	return st, err
}

// writeLayer is writePushLayer that leaves the removal of its staging to
// the caller (unstage, always set, to be called once). list, when set, is
// handed the raw upper image to read before anything writes it (a stopped
// push's checkpoint lists it); its error fails the push. t times its steps
// (nil: not timed).
func writeLayer(ctx context.Context, dir vmdir.Dir, rec instance.Record, src, dest string, layer *string, list func(context.Context, string) error, t *phases) (st hostwrite.Stats, unstage func(), err error) {
	unstage = func() {}
	// A fork not yet started (its first boot restores a memory state that
	// expects its disk as forked): writing the disk now would corrupt its
	// file system; through the guest the push waits for the fork to run.
	if _, err := os.Lstat(dir.Path(supervisor.ForkFile)); !errors.Is(err, os.ErrNotExist) {
		return st, unstage, errNotHere
	}
	sweepPushStaging(dir)
	tmp, err := os.MkdirTemp(string(dir), pushStagingPrefix)
	if err != nil {
		return st, unstage, hostFull(err, "stage the push source")
	}
	// The staged tree carries the source's modes: a read-only directory too.
	unstage = func() { _ = fsutil.RemoveAll(tmp) }
	tree := filepath.Join(tmp, "tree")
	if err := os.Mkdir(tree, 0o700); err != nil {
		return st, unstage, err
	}
	// What does not fit the workspace disk is not copied onto the host's
	// first (a source the host cannot link is staged as copies).
	l := layersOf(dir, rec)
	disk, err := os.Stat(l.Disk)
	if err != nil {
		return st, unstage, err
	}
	// A source that is a symlink (to a directory) is not staged, which
	// never follows one; the guest's path takes it.
	if fi, err := os.Lstat(src); err != nil || !fi.IsDir() {
		return st, unstage, errNotHere
	}
	names, err := topNames(src)
	if err != nil {
		return st, unstage, err
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(dest, workspace.Root), "/")
	in := "/upper"
	if rel != "" {
		in += "/" + rel
	}
	t.mark("prepare")
	upper, done, err := l.FlattenedUpper(ctx)
	if err != nil {
		return st, unstage, err
	}
	defer done()
	t.mark("raw_upper")
	// The source is staged, and the script to write it made, while the
	// images are asked about its top-level names (the staging's are
	// checked to be among them) and a raw upper layer is copied (in the
	// kernel) into the new layer: the three take about as long on a
	// loaded 2-core host, ~0.1-0.2 s each for 1,000 files over a 196 MiB
	// upper layer. The copy takes all the upper's data; the body of its
	// clean journal, known once the image has answered, is punched out
	// of the copy after (see journalBody), its pages never written back.
	var staged tarutil.Stats
	var changed func() bool
	var script []byte
	var serr, lerr, cerr error
	var name string
	move := strings.HasPrefix(filepath.Base(upper), ".flat-")
	var wg sync.WaitGroup
	wg.Go(func() {
		staged, changed, serr = workspace.StageDir(ctx, src, tree, disk.Size())
		if serr == nil {
			script, st, serr = hostwrite.Script(tree, in)
		}
	})
	// The listing (~0.15-0.3 s of confined debugfs runs for 1,000 files)
	// reads an upper that is copied, not moved, while debugfs writes the
	// copy, on the core debugfs leaves free: beside the copy, the staging
	// and the probes it had four tasks share two cores, and the copy alone
	// (0.10-0.17 s) took 0.38-0.68 s. A private flattened upper becomes
	// the layer debugfs writes, so it is listed before.
	listLater := list != nil && !move
	if list != nil && !listLater {
		wg.Go(func() { lerr = list(ctx, upper) })
	}
	if !move {
		wg.Go(func() { name, cerr = l.NewPushRoot(upper, false) })
	}
	missing, probe, err := pushable(ctx, upper, rec.WorkspaceBase, in, rel, names)
	t.mark("probe")
	wg.Wait()
	t.mark("stage_script_copy")
	if name != "" {
		// Removed unless it becomes the layer below.
		defer func() {
			if *layer != name {
				_ = os.Remove(l.Path(name))
			}
		}()
	}
	if err == nil {
		err = lerr
	}
	if errors.Is(serr, workspace.ErrStageTooLarge) {
		return st, unstage, errdefs.Wrap(errdefs.ErrInvalidArgument, serr, "push a smaller tree, or create the workspace with a larger disk (PYRO_WORKSPACE_DISK_MIB)",
			"the push source holds more than the workspace disk (%d bytes)", disk.Size())
	}
	if serr != nil && !errors.Is(serr, hostwrite.ErrUnsupported) {
		return st, unstage, hostFull(serr, "stage the push source")
	}
	if err == nil {
		err = serr // a name debugfs cannot take: the guest's path
	}
	if err != nil {
		return st, unstage, err
	}
	if cerr != nil {
		return st, unstage, cerr
	}
	if stagedNames, err := topNames(tree); err != nil || !subset(stagedNames, names) {
		return st, unstage, errdefs.New(errdefs.ErrUnavailable, "push again once the source is not being written; the workspace is unchanged",
			"the push source %s changed while it was staged", src)
	}
	// What surely does not fit the workspace disk fails here (debugfs
	// would fail on it later).
	if need := staged.Bytes/probe.BlockSize + int64(staged.Dirs); need > probe.FreeBlocks || int64(staged.Files+staged.Dirs) > probe.FreeInodes {
		return st, unstage, errdefs.New(errdefs.ErrFailedPrecondition, "free space in the workspace, or push less; the workspace is unchanged",
			"the push (%d bytes in %d files) does not fit the workspace disk (%d bytes and %d inodes free)",
			staged.Bytes, staged.Files+staged.Dirs, probe.FreeBlocks*probe.BlockSize, probe.FreeInodes)
	}
	skip, err := journalBody(upper, probe)
	if err != nil {
		return st, unstage, err
	}
	if move {
		// The private flattened copy becomes the layer: its journal
		// body is punched out (its pages, still dirty from the
		// flattening, are then never written back by the final sync).
		if err := punch(upper, skip); err != nil {
			return st, unstage, err
		}
		if name, err = l.NewPushRoot(upper, true); err != nil {
			return st, unstage, err
		}
	} else if err := punch(l.Path(name), skip); err != nil {
		return st, unstage, err
	}
	t.mark("journal")
	mkdirs, err := hostwrite.Mkdirs(missing, time.Now())
	if err != nil {
		_ = os.Remove(l.Path(name))
		return st, unstage, err
	}
	script = append(mkdirs, script...)
	// The old upper's pages are of no more use once copied and listed
	// (unless the push fails: then they are read again). Dropping them
	// while debugfs writes, on the other core, spares the collection of
	// the old layer once the new one is the top most of its time (~100 ms
	// for 200 MiB of cached layer).
	dropped := make(chan struct{})
	go func() {
		defer close(dropped)
		if listLater {
			lerr = list(ctx, upper)
		}
		if !move {
			dropCache(upper)
		}
	}()
	err = hostwrite.Write(ctx, l.Path(name), tree, script)
	<-dropped
	t.mark("debugfs")
	if err == nil {
		err = lerr
	}
	if err != nil {
		_ = os.Remove(l.Path(name))
		if errors.Is(err, hostwrite.ErrWrite) {
			return st, unstage, errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "the workspace disk may be full: free space in it, or push less; the workspace is unchanged",
				"write the pushed tree into the workspace's upper layer")
		}
		return st, unstage, hostFull(err, "write the pushed tree into a copy of the upper layer")
	}
	// A source file (hard-linked into the staging) written to meanwhile
	// may be in the layer torn: the layer is not used.
	if changed() {
		_ = os.Remove(l.Path(name))
		return st, unstage, errdefs.New(errdefs.ErrUnavailable, "push again once the source is not being written; the workspace is unchanged",
			"a file of the push source %s was written while it was pushed", src)
	}
	*layer = name
	return st, unstage, nil
}

// pushStagingPrefix names a host push's private staging directory in the
// workspace directory.
const pushStagingPrefix = ".push-"

// sweepPushStaging removes what earlier host pushes killed mid-way (the
// process gone before its deferred removal) left staged: copies of their
// sources, up to a workspace disk each. The caller holds the instance
// lock, so no other push of this workspace stages meanwhile.
func sweepPushStaging(dir vmdir.Dir) {
	ents, err := os.ReadDir(string(dir))
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), pushStagingPrefix) {
			_ = fsutil.RemoveAll(dir.Path(e.Name()))
		}
	}
}

// pushable checks, in the guest's upper image (hostile: read with the
// bounded diskimg) and the baseline, that the push only adds: the journal
// needs no replay, each directory of in is a directory in the upper layer
// or new to both layers (then it is returned, to be made as the guest's
// MkdirAll would), and no top-level entry exists at in (upper) or rel
// (baseline). It asks each image once (one confined debugfs run each, the
// two at once) and returns what it learnt of the upper image.
func pushable(ctx context.Context, upper, base, in, rel string, top []string) (missing []string, up diskimg.Probe, err error) {
	parts := strings.Split(strings.TrimPrefix(in, "/"), "/")
	var upPaths, basePaths []string
	p := ""
	for i, part := range parts {
		p += "/" + part
		upPaths = append(upPaths, p)
		if i > 0 {
			basePaths = append(basePaths, "/"+strings.Join(parts[1:i+1], "/"))
		}
	}
	// A wide source into a directory that exists cannot be checked name by
	// name in one run; into a new directory no name needs checking.
	entries := len(top) <= maxProbedEntries
	if entries {
		for _, name := range top {
			upPaths = append(upPaths, in+"/"+name)
			basePaths = append(basePaths, path.Join("/", rel, name))
		}
	}
	var bp diskimg.Probe
	var berr error
	var wg sync.WaitGroup
	wg.Go(func() {
		bp, berr = diskimg.Image{Path: base, Budget: diskimg.DefaultBudget()}.Probe(ctx, basePaths)
	})
	up, err = diskimg.Image{Path: upper, Budget: diskimg.DefaultBudget()}.Probe(ctx, upPaths)
	wg.Wait()
	if err != nil || berr != nil || !up.Clean {
		return nil, up, errNotHere
	}
	for i := range parts {
		if len(missing) > 0 {
			missing = append(missing, upPaths[i])
			continue
		}
		u := up.Paths[i]
		switch {
		case u.Err != nil:
			return nil, up, errNotHere
		case u.Found && u.IsDir():
			continue
		case u.Found:
			return nil, up, errNotHere // a file, link or whiteout in the way
		}
		// New in the upper layer: the baseline must not hold it either
		// (the guest would merge into, or refuse, what is there).
		if i == 0 {
			return nil, up, errNotHere
		}
		if b := bp.Paths[i-1]; b.Err != nil || b.Found {
			return nil, up, errNotHere
		}
		missing = append(missing, upPaths[i])
	}
	if len(missing) > 0 {
		return missing, up, nil // nothing can exist under a new directory
	}
	if !entries {
		return nil, up, errNotHere
	}
	for j := range top {
		u, b := up.Paths[len(parts)+j], bp.Paths[len(parts)-1+j]
		if u.Err != nil || u.Found || b.Err != nil || b.Found {
			return nil, up, errNotHere
		}
	}
	return nil, up, nil
}

// maxProbedEntries bounds the top-level entries of a push into an existing
// directory (each is looked up in both images).
const maxProbedEntries = 2048

// journalBody is the byte ranges of the clean journal's body in the upper
// image, which a push's copy of it leaves out (diskimg.JournalBody): up to
// 128 MiB of an 8 GiB disk the guest wrote once and nothing reads.
func journalBody(upper string, probe diskimg.Probe) ([]workspace.Range, error) {
	f, err := os.Open(upper)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	body, err := probe.JournalBody(f)
	if err != nil {
		return nil, err
	}
	out := make([]workspace.Range, len(body))
	for i, r := range body {
		out[i] = workspace.Range{Off: r[0], Len: r[1]}
	}
	return out, nil
}

// punch makes the ranges of the file p holes.
func punch(p string, ranges []workspace.Range) error {
	if len(ranges) == 0 {
		return nil
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, r := range ranges {
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, r.Off, r.Len); err != nil {
			return err
		}
	}
	return nil
}

// dropCache asks the kernel to drop the cached pages of the file p.
func dropCache(p string) {
	f, err := os.Open(p)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// topNames returns the names in the directory dir.
func topNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// subset reports whether every name of a is in b.
func subset(a, b []string) bool {
	in := make(map[string]bool, len(b))
	for _, n := range b {
		in[n] = true
	}
	for _, n := range a {
		if !in[n] {
			return false
		}
	}
	return true
}
