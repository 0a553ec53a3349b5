package workspace

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// The pending quiet report of a workspace (agentapi/quiet.go): after the
// last exec the guest was quiet at an epoch, /workspace synced, and the
// upper layer's listing then (asked for by the housekeeping after the
// exec's answer). The next exec's checkpoint is taken from it
// without asking the guest anything; the guest refuses that exec if it
// changed since, and the host then takes the checkpoint the usual way.
// The files are hints: written without fsync, replaced by the next
// exec's report or cleared by a checkpoint taken the usual way, and
// worthless to a guest that restarted (its epochs start afresh), so a
// lost, stale or torn one only costs the usual checkpoint.
//
//	pending.json                 {"epoch": E, "manifest": M, "base": B,
//	                              "frozen": R, "frozen_bytes": N}
//	pending-M.manifest.json      the upper layer's listing at epoch M
//	pending-M.delta.json         with base B: what changed since the
//	                             listing of epoch B (pending-B.manifest.json)
//
// A delta report is kept as it came (a few entries), not applied to the
// listing (~120 KB for 1,000 files: decoded, changed, encoded again) while
// the exec waits: the layer housekeeping after the exec folds it
// (FoldPending), and a checkpoint that finds it unfolded folds it first.

type pending struct {
	Epoch    uint64 `json:"epoch"`
	Manifest uint64 `json:"manifest"`
	// Base, when set, says the listing of epoch Manifest is kept unfolded:
	// the listing of epoch Base and the delta pending-Manifest.delta.json.
	Base uint64 `json:"base,omitempty"`
	// From says how the guest's report gave the listing: "listing"
	// (whole), "delta" (what changed since the one before) or "same".
	From string `json:"from,omitempty"`
	// Frozen, when set, is the layer the housekeeping after the exec
	// froze (the live top then, holding what the exec wrote: pyro's
	// freezeAhead), with the bytes its file holds: the next checkpoint
	// names it and counts them.
	Frozen      *LayerRef `json:"frozen,omitempty"`
	FrozenBytes int64     `json:"frozen_bytes,omitempty"`
}

func (c Checkpoints) pendingPath() string { return filepath.Join(c.Dir, "pending.json") }

func (c Checkpoints) pendingManifest(m uint64) string {
	return filepath.Join(c.Dir, "pending-"+strconv.FormatUint(m, 10)+".manifest.json")
}

func (c Checkpoints) pendingDelta(m uint64) string {
	return filepath.Join(c.Dir, "pending-"+strconv.FormatUint(m, 10)+".delta.json")
}

func (c Checkpoints) readPending() (pending, bool) {
	var p pending
	b, err := os.ReadFile(c.pendingPath())
	if err != nil || len(b) > 4096 || json.Unmarshal(b, &p) != nil || p.Manifest == 0 {
		return pending{}, false
	}
	need := []string{c.pendingManifest(p.Manifest)}
	if p.Base != 0 {
		need = []string{c.pendingManifest(p.Base), c.pendingDelta(p.Manifest)}
	}
	for _, f := range need {
		if _, err := os.Stat(f); err != nil {
			return pending{}, false
		}
	}
	return p, true
}

// PendingManifest returns the epoch of the listing the host holds for the
// next checkpoint (0: none), for the next quiet report's have.
func (c Checkpoints) PendingManifest() uint64 {
	p, ok := c.readPending()
	if !ok {
		return 0
	}
	return p.Manifest
}

// SavePending keeps an exec's quiet report for the next checkpoint; a nil
// report (the guest was not quiet) or one that refers to a listing the
// host does not hold clears it. A delta is kept unfolded (see above). The
// caller holds the layer lock.
func (c Checkpoints) SavePending(rep *agentapi.QuietReport) error {
	old, hadOld := c.readPending()
	if rep == nil || rep.Epoch == 0 {
		return c.ClearPending()
	}
	p := pending{Epoch: rep.Epoch}
	switch {
	case rep.Manifest != nil:
		if err := os.MkdirAll(c.Dir, 0o700); err != nil {
			return err
		}
		b, err := json.Marshal(rep.Manifest)
		if err != nil {
			return err
		}
		if err := replaceFile(c.pendingManifest(rep.Epoch), b, false); err != nil {
			return err
		}
		p.Manifest, p.From = rep.Epoch, "listing"
	case rep.Delta != nil && hadOld && rep.Delta.Base == old.Manifest:
		// Deltas are folded one at a time: one left from the exec
		// before (no housekeeping ran in between) is folded first.
		if old.Base != 0 {
			var err error
			if old, err = c.fold(old); err != nil {
				return c.ClearPending()
			}
		}
		b, err := json.Marshal(rep.Delta)
		if err != nil || len(b) > maxPendingManifestBytes {
			return c.ClearPending()
		}
		if err := replaceFile(c.pendingDelta(rep.Epoch), b, false); err != nil {
			return err
		}
		p.Manifest, p.Base, p.From = rep.Epoch, old.Manifest, "delta"
	case hadOld && rep.SameAs == old.Manifest:
		p.Manifest, p.Base, p.From = old.Manifest, old.Base, "same"
	default:
		return c.ClearPending()
	}
	return c.writePending(p)
}

// writePending makes p the pending report and drops the listings and
// deltas it does not use.
func (c Checkpoints) writePending(p pending) error {
	b, _ := json.Marshal(p)
	if err := replaceFile(c.pendingPath(), b, false); err != nil {
		return err
	}
	keep := []string{c.pendingManifest(p.Manifest)}
	if p.Base != 0 {
		keep = []string{c.pendingManifest(p.Base), c.pendingDelta(p.Manifest)}
	}
	c.dropPendingFiles(keep...)
	return nil
}

// FoldPending applies a delta the pending report keeps unfolded to its
// listing (the housekeeping after an exec does it, off the exec's path).
// A delta that cannot be folded clears the report. The caller holds the
// layer lock.
func (c Checkpoints) FoldPending() error {
	p, ok := c.readPending()
	if !ok || p.Base == 0 {
		return nil
	}
	_, err := c.fold(p)
	return err
}

// fold writes the listing of p's epoch from its base and delta and makes
// it the pending one; on failure the report is cleared. A fold a crash cut
// short is done again: the delta is kept until pending.json no longer
// names it, and applying it twice gives the same listing (ApplyDelta only
// puts entries in and takes subtrees out).
func (c Checkpoints) fold(p pending) (pending, error) {
	fail := func(err error) (pending, error) {
		_ = c.ClearPending()
		return pending{}, err
	}
	b, err := os.ReadFile(c.pendingDelta(p.Manifest))
	if err != nil {
		return fail(err)
	}
	var d agentapi.LayerDelta
	if err := json.Unmarshal(b, &d); err != nil || d.Base != p.Base {
		return fail(errors.New("pending delta damaged"))
	}
	folded, err := c.applyPendingDelta(p.Base, d)
	if err != nil {
		return fail(err)
	}
	if err := replaceFile(c.pendingManifest(p.Manifest), folded, false); err != nil {
		return fail(err)
	}
	p.Base = 0
	if err := c.writePending(p); err != nil {
		return fail(err)
	}
	return p, nil
}

// maxPendingManifestBytes bounds the listing a chain of deltas builds on
// the host: what one full quiet report may carry.
const maxPendingManifestBytes = agentapi.MaxQuietManifestBytes

// applyPendingDelta returns the pending listing of epoch base with d
// applied, encoded; an error when it cannot be read or grows past
// maxPendingManifestBytes (the next checkpoint then asks the guest).
func (c Checkpoints) applyPendingDelta(base uint64, d agentapi.LayerDelta) ([]byte, error) {
	f, err := os.Open(c.pendingManifest(base))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var m agentapi.LayerManifest
	if err := json.NewDecoder(io.LimitReader(f, 2*maxPendingManifestBytes)).Decode(&m); err != nil {
		return nil, err
	}
	b, err := json.Marshal(ApplyDelta(m, d))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPendingManifestBytes {
		return nil, errors.New("pending listing over its bound")
	}
	return b, nil
}

// ApplyDelta returns m with d applied: every entry at or below a removed
// path goes, and so does everything below a changed entry that is not a
// directory; then the changed entries are put in. The result is in the
// walk's order (parents before children). The delta comes from the guest:
// whatever it says only shapes this listing.
func ApplyDelta(m agentapi.LayerManifest, d agentapi.LayerDelta) agentapi.LayerManifest {
	removed := make(map[string]bool, len(d.Removed))
	var gone subtrees // everything below goes
	for _, p := range d.Removed {
		removed[p] = true
		gone.add(p)
	}
	set := make(map[string]agentapi.LayerEntry, len(d.Changed))
	for _, e := range d.Changed {
		set[e.Path] = e
		if e.Kind != "dir" {
			gone.add(e.Path)
		}
	}
	out := make([]agentapi.LayerEntry, 0, len(m.Entries)+len(set))
	for _, e := range m.Entries {
		if _, ok := set[e.Path]; ok || removed[e.Path] || gone.below(e.Path) {
			continue
		}
		out = append(out, e)
	}
	for _, e := range d.Changed {
		if set[e.Path] == e {
			out = append(out, e)
			delete(set, e.Path)
		}
	}
	sort.Slice(out, func(i, j int) bool { return walkLess(out[i].Path, out[j].Path) })
	return agentapi.LayerManifest{Entries: out}
}

// walkLess orders paths as the guest's walk lists them: depth first,
// names in byte order, parents before children.
func walkLess(a, b string) bool {
	for a != "" && b != "" {
		ca, ra, _ := strings.Cut(a, "/")
		cb, rb, _ := strings.Cut(b, "/")
		if ca != cb {
			return ca < cb
		}
		a, b = ra, rb
	}
	return a == "" && b != ""
}

// HasPending reports whether a quiet report is pending.
func (c Checkpoints) HasPending() bool {
	_, ok := c.readPending()
	return ok
}

// SetFrozenAhead notes in the pending report that the layer ref (its file
// holding bytes) was frozen after the exec that reported it. The caller
// holds the layer lock.
func (c Checkpoints) SetFrozenAhead(ref LayerRef, bytes int64) error {
	p, ok := c.readPending()
	if !ok {
		return nil
	}
	p.Frozen, p.FrozenBytes = &ref, bytes
	b, _ := json.Marshal(p)
	return replaceFile(c.pendingPath(), b, false)
}

// FrozenAhead returns the layer frozen after the pending report's exec
// and the bytes its file held (ok false: none).
func (c Checkpoints) FrozenAhead() (LayerRef, int64, bool) {
	p, ok := c.readPending()
	if !ok || p.Frozen == nil {
		return LayerRef{}, 0, false
	}
	return *p.Frozen, p.FrozenBytes, true
}

// ClearPending forgets the pending report (the next checkpoint asks the
// guest). The caller holds the layer lock.
func (c Checkpoints) ClearPending() error {
	err := os.Remove(c.pendingPath())
	c.dropPendingFiles()
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// dropPendingFiles removes the pending listings and deltas but keep.
func (c Checkpoints) dropPendingFiles(keep ...string) {
	ents, _ := os.ReadDir(c.Dir)
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "pending-") || !(strings.HasSuffix(name, ".manifest.json") || strings.HasSuffix(name, ".delta.json")) {
			continue
		}
		if !slices.Contains(keep, filepath.Join(c.Dir, name)) {
			_ = os.Remove(filepath.Join(c.Dir, name))
		}
	}
}

// TakePending returns the pending report: the epoch the guest must still
// be at, and the listing's file (the next report may say the layer is
// unchanged since it). ok is false when there is none. The report is not
// used up: the guest runs the exec that follows only while it is still at
// that epoch, and refuses a second use once the first exec ran, so using
// it again (after a process died between the checkpoint and the exec)
// costs at most a checkpoint taken again the usual way.
func (c Checkpoints) TakePending() (epoch uint64, manifest string, ok bool) {
	p, ok := c.readPending()
	if !ok || p.Epoch == 0 {
		return 0, "", false
	}
	if p.Base != 0 {
		// No housekeeping ran since the exec that reported the delta.
		var err error
		if p, err = c.fold(p); err != nil {
			return 0, "", false
		}
	}
	return p.Epoch, c.pendingManifest(p.Manifest), true
}

// TakeLayerListed is TakeLayer with the listing in the file manifest
// (linked, not copied: the pending listing is replaced, never changed),
// and with the record written but not yet synced: durable syncs it. The
// caller runs the command meanwhile and calls durable before it reports
// the command's end. Kill -9 of any process loses nothing written (the
// record is in the page cache and names a frozen layer); a host crash
// before durable returned may leave the record damaged, which reads as no
// checkpoint (see takeLayer), never as another state.
func (c Checkpoints) TakeLayerListed(ref LayerRef, bytes int64, manifest, command string) (cp Checkpoint, durable func() error, err error) {
	cp, err = c.takeLayerWith(ref, bytes, command, false, func(p string) error {
		_ = os.Remove(p)
		if err := os.Link(manifest, p); err == nil {
			return nil
		}
		b, err := os.ReadFile(manifest)
		if err != nil {
			return err
		}
		return replaceFile(p, b, false)
	})
	if err != nil {
		return cp, nil, err
	}
	p := c.path(cp.Number, ".json")
	return cp, func() error { return syncFile(p) }, nil
}

// syncFile flushes the file at p to the disk.
func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// EmptyTop reports whether the live top is a qcow2 overlay nothing was
// written to since it was made, and returns its parent: the state of
// /workspace is then exactly the parent's, so a checkpoint can name the
// parent instead of freezing the empty top under another overlay. Any
// write QEMU makes (data, zeroes and discards included) changes an L2
// entry or allocates a cluster past the fresh overlay's end, and L2
// tables are written through at the guest's next flush; the guest synced
// /workspace before the quiet report this is used with. So: the file is
// exactly as long as a fresh overlay, its L1 table is as made (each entry
// at its preallocated L2 table, or empty for an overlay made before the
// tables were preallocated), and the L2 tables are all zero.
func (l Layers) EmptyTop(top string) (parent string, empty bool) {
	if l.raw(top) {
		return "", false
	}
	parent, err := l.Parent(top)
	if err != nil || parent == "" {
		return "", false
	}
	f, err := os.Open(l.Path(top))
	if err != nil {
		return "", false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", false
	}
	h := make([]byte, 48)
	if _, err := io.ReadFull(f, h); err != nil {
		return "", false
	}
	be := binary.BigEndian
	n, off := int64(be.Uint32(h[36:])), int64(be.Uint64(h[40:]))
	if n <= 0 || n*8 > qcowCluster || off != 3*qcowCluster {
		return "", false
	}
	prealloc := st.Size() == overlayClusters(n)*qcowCluster
	if !prealloc && st.Size() != 4*qcowCluster {
		return "", false
	}
	l1 := make([]byte, 8*n)
	if _, err := f.ReadAt(l1, off); err != nil {
		return "", false
	}
	for i := int64(0); i < n; i++ {
		want := uint64(0)
		if prealloc {
			want = uint64(l2Table(i)) | qcowCopied
		}
		if be.Uint64(l1[8*i:]) != want {
			return "", false
		}
	}
	if prealloc && !zeroFrom(f, l2Table(0), st.Size()) {
		return "", false
	}
	return parent, true
}

// maxZeroScan bounds the bytes zeroFrom reads where the file system does
// not report holes (the L2 tables of a 1 TiB disk take 128 MiB).
const maxZeroScan = 16 << 20

// zeroFrom reports whether f holds only zeroes from off to end: holes are
// skipped (SEEK_DATA), data is read and checked.
func zeroFrom(f *os.File, off, end int64) bool {
	buf := make([]byte, qcowCluster)
	read := int64(0)
	for off < end {
		d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return true // nothing but a hole up to the end
		}
		if err != nil {
			d = off // no hole reporting: read everything
		}
		if d >= end {
			return true
		}
		off = d
		n := min(int64(len(buf)), end-off)
		if read += n; read > maxZeroScan {
			return false
		}
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return false
		}
		for _, b := range buf[:n] {
			if b != 0 {
				return false
			}
		}
		off += n
	}
	return true
}
