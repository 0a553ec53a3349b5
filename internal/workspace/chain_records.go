package workspace

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Snapshots and checkpoints of a chained upper layer (chain.go) record a
// LayerRef in a sidecar (<name>.layer, N.layer) instead of an image copy.
// An O(1) snapshot cannot hash its data, so what is checked before a
// restore is: the record's sha256 is the digest of the sidecar (a changed
// or torn sidecar is refused), every layer of the chain has a well-formed
// qcow2 header linking it to its parent, and the frozen layer still has
// the size and modification time it had when it was frozen (QEMU never
// writes a layer again once an overlay is over it; a layer that changed
// is refused as damaged).

// FormatLayer is a snapshot stored as a frozen layer of the chain.
const FormatLayer = "layer"

// LayerRef names a frozen layer and what it looked like when frozen.
type LayerRef struct {
	Layer string `json:"layer"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
}

// Ref returns name's LayerRef and the bytes its file holds.
func (l Layers) Ref(name string) (LayerRef, int64, error) {
	size, mtime, blocks, err := l.Identity(name)
	return LayerRef{Layer: name, Size: size, Mtime: mtime}, blocks, err
}

// ChainBytes is what the state ending at layer end holds on the host: the
// allocated bytes of every layer of its chain. A snapshot reports this (the
// state it keeps), where a checkpoint reports its own layer's bytes (what
// one command changed).
func (l Layers) ChainBytes(end string) (int64, error) {
	chain, err := l.Chain(end)
	if err != nil {
		return 0, err
	}
	var sum int64
	for _, name := range chain {
		_, _, blocks, err := l.Identity(name)
		if err != nil {
			return 0, err
		}
		sum += blocks
	}
	return sum, nil
}

// writeRef stores ref at p durably and returns the digest of what it wrote.
func writeRef(p string, ref LayerRef) (string, error) {
	b, _ := json.Marshal(ref)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), replaceFile(p, b, true)
}

// readRef reads the sidecar at p and checks it against sum.
func readRef(p, sum string) (LayerRef, bool) {
	var ref LayerRef
	b, err := os.ReadFile(p)
	if err != nil || len(b) > 4096 {
		return ref, false
	}
	got := sha256.Sum256(b)
	if hex.EncodeToString(got[:]) != sum || json.Unmarshal(b, &ref) != nil {
		return ref, false
	}
	return ref, true
}

// Verify checks that ref's chain is intact (see the top of this file).
func (l Layers) Verify(ref LayerRef) error {
	if _, err := l.Chain(ref.Layer); err != nil {
		return err
	}
	size, mtime, _, err := l.Identity(ref.Layer)
	if err != nil {
		return err
	}
	if size != ref.Size || mtime != ref.Mtime {
		return os.ErrInvalid
	}
	return nil
}

// KeepLayers returns the frozen layers that checkpoints and snapshots in
// the workspace directory dir refer to (what GC must keep).
func KeepLayers(dir string) []string {
	var out []string
	for _, sub := range []string{CheckpointsDir, "snapshots"} {
		ents, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".layer") {
				continue
			}
			var ref LayerRef
			if b, err := os.ReadFile(filepath.Join(dir, sub, e.Name())); err == nil && len(b) <= 4096 && json.Unmarshal(b, &ref) == nil {
				out = append(out, ref.Layer)
			}
		}
	}
	return out
}

// TakeLayer records the frozen layer ref (its file holding bytes) and the
// manifest m as the next checkpoint (Prune drops the oldest past the caps).
func (c Checkpoints) TakeLayer(ref LayerRef, bytes int64, m agentapi.LayerManifest, command string) (Checkpoint, error) {
	return c.takeLayer(ref, bytes, command, func(p string) error {
		b, _ := json.Marshal(m)
		return replaceFile(p, b, false)
	})
}

// takeLayer records ref as the next checkpoint, its listing written by
// list. Only the record, written last, is made durable on its own: a
// checkpoint exists once its record does, and kill -9 of any process
// loses nothing already written; after a host crash a record whose
// sidecar or listing did not reach the disk reads as damaged, never as
// another state.
func (c Checkpoints) takeLayer(ref LayerRef, bytes int64, command string, list func(string) error) (Checkpoint, error) {
	return c.takeLayerWith(ref, bytes, command, true, list)
}

// takeLayerWith is takeLayer; with sync false the record is not synced
// (the caller syncs it: TakeLayerListed).
func (c Checkpoints) takeLayerWith(ref LayerRef, bytes int64, command string, sync bool, list func(string) error) (Checkpoint, error) {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return Checkpoint{}, err
	}
	// The number follows every record's and the highest one ever
	// removed (holdNumber): a number that had a record is never taken
	// again. One whose record was never written may be: a crash half way
	// leaves a sidecar or a listing under it, which no record vouches
	// for (nothing reads them, KeepLayers only keeps a layer longer) and
	// which the next checkpoint replaces. So nothing is written to
	// reserve it (the rename over "last" was the dearest of the
	// checkpoint's file steps before a quiet exec's command: ~0.3 ms).
	n, err := c.nextNumber()
	if err != nil {
		return Checkpoint{}, err
	}
	b, _ := json.Marshal(ref)
	sum := sha256.Sum256(b)
	if err := replaceFile(c.path(n, ".layer"), b, false); err != nil {
		c.remove(n)
		return Checkpoint{}, err
	}
	if err := list(c.path(n, ".manifest.json")); err != nil {
		c.remove(n)
		return Checkpoint{}, err
	}
	return c.record(n, command, bytes, hex.EncodeToString(sum[:]), sync)
}

// LayerOf returns checkpoint n's frozen layer, verified (ok false: n is
// stored as an image copy; use Verify).
func (c Checkpoints) LayerOf(n int, l Layers) (LayerRef, bool, error) {
	cp, err := c.Get(n)
	if err != nil {
		return LayerRef{}, false, err
	}
	if _, err := os.Stat(c.path(n, ".layer")); err != nil {
		return LayerRef{}, false, nil
	}
	ref, ok := readRef(c.path(n, ".layer"), cp.SHA256)
	if !ok || l.Verify(ref) != nil {
		return LayerRef{}, true, errdefs.New(errdefs.ErrFailedPrecondition, "undo to another checkpoint", "checkpoint %d is damaged", n)
	}
	return ref, true, nil
}

// SaveLayer records the frozen layer ref (its file holding bytes) as
// snapshot name, under the host's snapshot caps.
func (s Snapshots) SaveLayer(name string, ref LayerRef, bytes int64) (Snapshot, error) {
	if err := ValidateSnapshotName(name); err != nil {
		return Snapshot{}, err
	}
	if _, err := s.admit(name); err != nil {
		return Snapshot{}, err
	}
	sum, err := writeRef(s.layerPath(name), ref)
	if err != nil {
		return Snapshot{}, err
	}
	snap := Snapshot{Name: name, CreatedAt: time.Now().UTC(), Bytes: bytes, SHA256: sum, Format: FormatLayer}
	if err := s.writeRecord(snap); err != nil {
		_ = os.Remove(s.layerPath(name))
		return Snapshot{}, err
	}
	return snap, nil
}

func (s Snapshots) layerPath(name string) string { return filepath.Join(s.Dir, name+".layer") }

// LayerOf returns snapshot name's frozen layer, verified (ok false: the
// snapshot is not a layer; use VerifyLayered).
func (s Snapshots) LayerOf(name string, l Layers) (LayerRef, bool, error) {
	snap, err := s.Get(name)
	if err != nil || snap.Format != FormatLayer {
		return LayerRef{}, false, err
	}
	ref, ok := readRef(s.layerPath(name), snap.SHA256)
	if !ok || l.Verify(ref) != nil {
		return LayerRef{}, true, errdefs.New(errdefs.ErrFailedPrecondition, "restore another snapshot", "snapshot %q is damaged", name)
	}
	return ref, true, nil
}
