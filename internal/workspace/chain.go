package workspace

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// Layer chains (QEMU workspaces): the upper layer of /workspace is a chain
// of images, a raw ext4 root (the workspace's disk, or a fresh one after a
// reset to the baseline) under qcow2 overlays. QEMU writes only the top.
// A snapshot or checkpoint freezes the top where it is and puts an empty
// overlay over it (QMP blockdev-snapshot): nothing is copied, whatever the
// size of the layer, and the frozen layer (with the ones below it) is the
// saved state. Reset and undo start the guest on a fresh overlay over the
// saved layer; layers no saved state or the live chain reaches are
// deleted; old checkpoints are merged into their parent (block-commit).
//
// Every file lives in the workspace directory: the root as DiskFile, the
// others in LayersDir as N.qcow2 or N.raw, named by an increasing number.
// The live top is named in LayersDir/top (written atomically); each layer
// names its parent in its qcow2 header, so a chain is read by following
// headers from its end, by pyro and by qemu-img alike.

// LayersDir holds a workspace's chained layers and the name of the top.
const LayersDir = "layers"

const topFile = "top"

var layerName = regexp.MustCompile(`^layers/([1-9][0-9]{0,8})\.(qcow2|raw)$`)

// maxChain bounds a chain's length when it is followed (merges keep the
// live chain near the checkpoint count cap).
const maxChain = 1024

// Layers is one workspace's layer store.
type Layers struct {
	Dir  string // the workspace directory
	Disk string // the workspace's disk (the first root)
}

func (l Layers) rootName() string { return filepath.Base(l.Disk) }

// Path returns a layer's file.
func (l Layers) Path(name string) string { return filepath.Join(l.Dir, name) }

// valid reports whether name is a layer of this store.
func (l Layers) valid(name string) bool { return name == l.rootName() || layerName.MatchString(name) }

// raw reports whether a layer is a raw root (no parent).
func (l Layers) raw(name string) bool { return name == l.rootName() || strings.HasSuffix(name, ".raw") }

// Chained reports whether the workspace keeps its upper layer as a chain.
func (l Layers) Chained() bool {
	_, err := os.Stat(filepath.Join(l.Dir, LayersDir, topFile))
	return err == nil
}

// Top returns the live top layer's name (the disk itself before any
// chain exists).
func (l Layers) Top() (string, error) {
	b, err := os.ReadFile(filepath.Join(l.Dir, LayersDir, topFile))
	if errors.Is(err, os.ErrNotExist) {
		return l.rootName(), nil
	}
	if err != nil {
		return "", err
	}
	name := strings.TrimSpace(string(b))
	if !l.valid(name) {
		return "", fmt.Errorf("layers: bad top %q", name)
	}
	return name, nil
}

// SetTop names the live top layer (atomically, durably: a reset or an
// undo names a new chain and deletes the old one's layers).
func (l Layers) SetTop(name string) error { return l.setTop(name, true) }

// PushedTop names the live top layer after a push put it over the old one
// (atomically, not synced: kill -9 of any process loses nothing written,
// and for a host crash the fsync of the checkpoint or snapshot record that
// follows every push commits the rename with it on a journaled file
// system; should it not, the chain read at the next boot ends at the old
// top, which holds the recorded state).
func (l Layers) PushedTop(name string) error { return l.setTop(name, false) }

func (l Layers) setTop(name string, durable bool) error {
	if !l.valid(name) {
		return fmt.Errorf("layers: bad layer %q", name)
	}
	if err := os.MkdirAll(filepath.Join(l.Dir, LayersDir), 0o700); err != nil {
		return err
	}
	if err := replaceFile(filepath.Join(l.Dir, LayersDir, topFile), []byte(name), durable); err != nil {
		return err
	}
	if !durable {
		return nil
	}
	return fsutil.Sync(filepath.Join(l.Dir, LayersDir))
}

// Parent returns a layer's parent ("" for a raw root), checking the
// layer's structure on the way.
func (l Layers) Parent(name string) (string, error) {
	if !l.valid(name) {
		return "", fmt.Errorf("layers: bad layer %q", name)
	}
	if l.raw(name) {
		if _, err := os.Stat(l.Path(name)); err != nil {
			return "", err
		}
		return "", nil
	}
	info, err := ReadOverlay(l.Path(name))
	if err != nil {
		return "", err
	}
	parent := filepath.ToSlash(filepath.Clean(filepath.Join(LayersDir, info.Backing)))
	if !l.valid(parent) || parent == name {
		return "", fmt.Errorf("layers: %s has a bad parent %q", name, info.Backing)
	}
	// The parent's format is stated, never probed: qemu-img (which flattens
	// chains for the disk tools and export) would probe a raw root the
	// guest writes, and a qcow2 header the guest put there could name any
	// host file as its backing.
	want := "qcow2"
	if l.raw(parent) {
		want = "raw"
	}
	if info.BackingFmt != want {
		return "", fmt.Errorf("layers: %s states its parent's format as %q, not %s", name, info.BackingFmt, want)
	}
	return parent, nil
}

// Chain returns the layers from the root up to end.
func (l Layers) Chain(end string) ([]string, error) {
	var rev []string
	for name := end; name != ""; {
		if len(rev) >= maxChain {
			return nil, fmt.Errorf("layers: chain of %s longer than %d", end, maxChain)
		}
		rev = append(rev, name)
		p, err := l.Parent(name)
		if err != nil {
			return nil, err
		}
		name = p
	}
	out := make([]string, len(rev))
	for i, n := range rev {
		out[len(rev)-1-i] = n
	}
	return out, nil
}

// reachChain adds the layers of end's chain to reach, each with the length
// of its chain from the root, as Chain would read them (the same errors),
// but stops at a layer reach holds: its chain was read whole before. The
// chains of the top and of every checkpoint share most of their layers,
// and GC read each whole: with 50 checkpoints ~3,000 layer headers per
// housekeeping after every exec (gc 4-26 ms of the supervisor's time at
// load 5-9), each layer's once now.
func (l Layers) reachChain(end string, reach map[string]int) error {
	var path []string
	below := 0 // the chain length of the layer reach holds where the walk stopped
	for name := end; name != ""; {
		if d, ok := reach[name]; ok {
			below = d
			break
		}
		if len(path) >= maxChain {
			return fmt.Errorf("layers: chain of %s longer than %d", end, maxChain)
		}
		path = append(path, name)
		p, err := l.Parent(name)
		if err != nil {
			return err
		}
		name = p
	}
	if below+len(path) > maxChain {
		return fmt.Errorf("layers: chain of %s longer than %d", end, maxChain)
	}
	for i, n := range path {
		reach[n] = below + len(path) - i
	}
	return nil
}

// LiveChain returns the files of the live chain, root first, or nil when
// the workspace has a single raw upper layer (the disk itself).
func (l Layers) LiveChain() ([]string, error) {
	// Called as a guest boots (no QEMU runs): a pivot left under way is
	// settled from the files (chain_pivot.go).
	if _, err := l.SettlePivot(nil); err != nil {
		return nil, err
	}
	if !l.Chained() {
		return nil, nil
	}
	top, err := l.Top()
	if err != nil {
		return nil, err
	}
	names, err := l.Chain(top)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = l.Path(n)
	}
	return out, nil
}

// NodeName is QEMU's node name for a layer (stable across restarts, so a
// running QEMU and pyro agree on it).
func (l Layers) NodeName(name string) string {
	if m := layerName.FindStringSubmatch(name); m != nil {
		return "ws" + m[1]
	}
	return "ws0"
}

// next returns the next free layer number.
func (l Layers) next() (int, error) {
	ents, err := os.ReadDir(filepath.Join(l.Dir, LayersDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if m := layerName.FindStringSubmatch(LayersDir + "/" + e.Name()); m != nil {
			if v, _ := strconv.Atoi(m[1]); v > n {
				n = v
			}
		}
	}
	return n + 1, nil
}

// NewOverlay makes an empty overlay over parent and returns its name (the
// top is not changed).
func (l Layers) NewOverlay(parent string) (string, error) {
	if err := os.MkdirAll(filepath.Join(l.Dir, LayersDir), 0o700); err != nil {
		return "", err
	}
	st, err := os.Stat(l.Disk)
	if err != nil {
		return "", err
	}
	n, err := l.next()
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("%s/%d.qcow2", LayersDir, n)
	format := "qcow2"
	if l.raw(parent) {
		format = "raw"
	}
	rel, err := filepath.Rel(filepath.Join(l.Dir, LayersDir), l.Path(parent))
	if err != nil {
		return "", err
	}
	if err := CreateOverlay(l.Path(name), rel, format, st.Size()); err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return "", fmt.Errorf("%w (hint: free space on the host; the workspace is unchanged)", err)
		}
		return "", err
	}
	return name, fsutil.Sync(filepath.Join(l.Dir, LayersDir))
}

// NewRoot makes a new raw root layer: an empty ext4 file system, or a copy
// of the image from (a snapshot stored before chains existed).
func (l Layers) NewRoot(ctx context.Context, from string) (string, error) {
	if err := os.MkdirAll(filepath.Join(l.Dir, LayersDir), 0o700); err != nil {
		return "", err
	}
	n, err := l.next()
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("%s/%d.raw", LayersDir, n)
	if from == "" {
		err = CreateDisk(ctx, l.Path(name), DiskBytes())
	} else {
		_, _, err = CopyImage(from, l.Path(name), 0, "snapshot", "")
	}
	return name, err
}

// Identity is what is recorded of a frozen layer to notice a change to it
// later without reading it: its size and modification time (a qcow2 file
// QEMU wrote to grows or at least gets a new mtime).
func (l Layers) Identity(name string) (size, mtime, blocks int64, err error) {
	st, err := os.Stat(l.Path(name))
	if err != nil {
		return 0, 0, 0, err
	}
	var blk int64
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		blk = sys.Blocks * 512
	}
	return st.Size(), st.ModTime().UnixNano(), blk, nil
}

// GC deletes the layers in LayersDir that neither the live chain nor the
// chain of any name in keep reaches. An unreachable root disk is emptied
// (its size stays: it is the workspace's disk of record).
func (l Layers) GC(keep []string) error {
	top, err := l.Top()
	if err != nil {
		return err
	}
	if p, ok := l.PivotUnderWay(); ok { // chain_pivot.go: either may hold the workspace
		keep = append(keep[:len(keep):len(keep)], p.Parent, p.Layer)
	}
	reach := map[string]int{}
	for _, end := range append([]string{top}, keep...) {
		if err := l.reachChain(end, reach); err != nil && end == top {
			return err // never delete under a live chain that cannot be read
		}
	}
	// The next overlay (chain_next.go) is kept alone: the layer it was
	// made over may go, it is then made again.
	if n, ok := l.Next(); ok {
		reach[n.Layer] = 1
	}
	ents, err := os.ReadDir(filepath.Join(l.Dir, LayersDir))
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := LayersDir + "/" + e.Name()
		if _, ok := reach[name]; layerName.MatchString(name) && !ok {
			_ = os.Remove(l.Path(name))
		}
	}
	if _, ok := reach[l.rootName()]; !ok {
		if st, err := os.Stat(l.Disk); err == nil && st.Size() > 0 {
			if f, err := os.OpenFile(l.Disk, os.O_WRONLY, 0); err == nil {
				_ = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, st.Size())
				f.Close()
			}
		}
	}
	return nil
}

// RawUpper returns a raw image of the upper layer for the host tools that
// read raw ext4 (debugfs, DiskView): the disk itself, or for a chain a
// flattened sparse copy (qemu-img convert, following the headers) in the
// workspace directory, which done removes. The workspace must be stopped.
func (l Layers) RawUpper(ctx context.Context) (path string, done func(), err error) {
	return l.rawUpper(ctx, false)
}

// RawUpperFrozen is RawUpper for a running workspace whose guest holds the
// upper layer frozen (its writes flushed through QEMU): the chain is read
// beside the QEMU that holds it open (qemu-img -U). The caller holds the
// layer lock, so the top does not move meanwhile.
func (l Layers) RawUpperFrozen(ctx context.Context) (path string, done func(), err error) {
	return l.rawUpper(ctx, true)
}

// FlattenTimeout bounds one flattening of a chain (qemu-img convert of
// at most MaxDiskBytes, sparse: it copies what the layers hold).
var FlattenTimeout = 10 * time.Minute

func (l Layers) rawUpper(ctx context.Context, shared bool) (path string, done func(), err error) {
	if !l.Chained() {
		return l.Disk, func() {}, nil
	}
	top, err := l.Top()
	if err != nil {
		return "", nil, err
	}
	if _, err := l.Chain(top); err != nil {
		return "", nil, err
	}
	if l.raw(top) {
		return l.Path(top), func() {}, nil
	}
	// The raw copy is as large as the top's header says, and the QEMU that
	// runs the guest writes that header.
	info, err := ReadOverlay(l.Path(top))
	if err != nil {
		return "", nil, err
	}
	if info.Size > MaxDiskBytes {
		return "", nil, errdefs.New(errdefs.ErrFailedPrecondition, "reset the workspace or restore a snapshot",
			"the workspace's top layer claims a %d-byte disk, more than %d", info.Size, int64(MaxDiskBytes))
	}
	out := filepath.Join(l.Dir, fmt.Sprintf(".flat-%d.raw", os.Getpid()))
	_ = os.Remove(out)
	fail := func(err error) (string, func(), error) {
		_ = os.Remove(out)
		return "", nil, err
	}
	args := []string{"convert", "-f", "qcow2", "-O", "raw", "-S", "64k"}
	if shared {
		args = append(args, "-U")
	}
	cctx, cancel := context.WithTimeout(ctx, FlattenTimeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, "qemu-img", append(args, l.Path(top), out)...)
	cmd.WaitDelay = 5 * time.Second
	b, err := cmd.CombinedOutput()
	if cctx.Err() != nil && ctx.Err() == nil {
		return fail(errdefs.New(errdefs.ErrUnavailable, "the layers may be damaged; reset the workspace or restore a snapshot",
			"flattening the workspace's layers took longer than %s", FlattenTimeout))
	}
	if err != nil {
		msg := strings.TrimSpace(string(b))
		return fail(errdefs.Wrap(errdefs.ErrUnavailable, err, "install qemu-utils", "flatten the workspace's layers: %s", msg[:min(len(msg), 1024)]))
	}
	// qemu-img writes exactly the virtual size; anything else is not the
	// disk the header describes.
	if st, err := os.Stat(out); err != nil || st.Size() != info.Size {
		if err == nil {
			err = fmt.Errorf("the flattened copy holds %d bytes, not %d", st.Size(), info.Size)
		}
		return fail(errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "", "flatten the workspace's layers"))
	}
	return out, func() { _ = os.Remove(out) }, nil
}
