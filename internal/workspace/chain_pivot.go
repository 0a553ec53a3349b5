package workspace

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
)

// A pivot: the running QEMU switches the workspace disk to a new raw root
// layer that a host push wrote while the guest held /workspace unmounted
// (pyro's workspace_hostpush_running.go). The record LayersDir/pivot is
// written (synced) before the new layer is named the top, and removed
// once QEMU switched; while it is there, which of the two layers holds the
// workspace is settled before anything trusts the top (SettlePivot):
//
//   - the top does not name the new layer yet: nothing switched, the
//     record and the layer go;
//   - a running QEMU writes the old layer's node: it never switched (the
//     pushing process died in between), so the old layer is the top again;
//     it writes any other node: the switch happened;
//   - no QEMU runs (it was killed): the old layer changed since the
//     release (its size, modification time or blocks: QEMU wrote it, so the
//     guest had mounted it again and never saw the new layer) makes the old
//     layer the top again; otherwise the new one holds the push over
//     exactly what the old one holds.
//
// GC keeps both layers (and what is below the old one) meanwhile.

const pivotFile = "pivot"

// Pivot is the record of a pivot under way: the new layer, the layer it
// replaces as the top, and that layer's identity when the guest released
// it (Identity).
type Pivot struct {
	Layer  string `json:"layer"`
	Parent string `json:"parent"`
	Size   int64  `json:"size"`
	Mtime  int64  `json:"mtime"`
	Blocks int64  `json:"blocks"`
}

func (l Layers) pivotPath() string { return filepath.Join(l.Dir, LayersDir, pivotFile) }

// PivotUnderWay returns the pivot record (ok false: none, or not well
// formed).
func (l Layers) PivotUnderWay() (Pivot, bool) {
	var p Pivot
	b, err := os.ReadFile(l.pivotPath())
	if err != nil || len(b) > 4096 || json.Unmarshal(b, &p) != nil || !layerName.MatchString(p.Layer) || !l.valid(p.Parent) {
		return Pivot{}, false
	}
	return p, true
}

// SetPivot records a pivot (atomically, durably: the top named next is
// trusted only through it).
func (l Layers) SetPivot(p Pivot) error {
	if !layerName.MatchString(p.Layer) || !l.valid(p.Parent) {
		return errors.New("layers: bad pivot")
	}
	if err := os.MkdirAll(filepath.Join(l.Dir, LayersDir), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(p)
	return replaceFile(l.pivotPath(), b, true)
}

// ClearPivot removes the pivot record.
func (l Layers) ClearPivot() error {
	err := os.Remove(l.pivotPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// SettlePivot settles a pivot left under way (see above). liveNode names
// the node the running QEMU writes; nil when no QEMU runs. It reports
// whether the new layer is the top. The caller holds the layer lock.
func (l Layers) SettlePivot(liveNode func() (string, error)) (switched bool, err error) {
	p, ok := l.PivotUnderWay()
	if !ok {
		return false, l.ClearPivot()
	}
	top, err := l.Top()
	if err != nil {
		return false, err
	}
	back := func() (bool, error) {
		if top == p.Layer {
			if err := l.SetTop(p.Parent); err != nil {
				return false, err
			}
		}
		if err := l.ClearPivot(); err != nil {
			return false, err
		}
		_ = os.Remove(l.Path(p.Layer))
		return false, nil
	}
	if top != p.Layer {
		return back()
	}
	if liveNode != nil {
		node, err := liveNode()
		if err != nil {
			return false, err // never guess while a QEMU may write either
		}
		if node == l.NodeName(p.Parent) {
			return back()
		}
		return true, l.ClearPivot()
	}
	size, mtime, blocks, err := l.Identity(p.Parent)
	if err != nil {
		return false, err
	}
	if size != p.Size || mtime != p.Mtime || blocks != p.Blocks {
		return back()
	}
	return true, l.ClearPivot()
}
