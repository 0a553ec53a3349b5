package workspace

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
)

// The next overlay (a checkpoint without building anything): after each
// checkpoint, while the command runs, the overlay the next checkpoint puts
// over the live top is made ahead (its file written and synced, handed to
// the running QEMU as a node of its own), and named in LayersDir/next. The
// next checkpoint then only names it the top and has QEMU switch to it.
//
// The same record marks a switch under way: the top is named first, then
// QEMU switches, then the record goes. A record naming the top itself
// therefore says a switch may not have happened (the process doing it
// died in between) and the running QEMU may still write the layer below:
// whoever finds it asks QEMU before trusting the top (pyro's
// resolveSwitch). Any other record is only a hint, checked against the
// top's name and the overlay's header before use.

const nextFile = "next"

// NextLayer is the record of the next overlay.
type NextLayer struct {
	Layer  string `json:"layer"`
	Parent string `json:"parent"`
	// Staged says the running QEMU was handed the overlay as a node
	// (otherwise the switch hands it over first).
	Staged bool `json:"staged,omitempty"`
	// DropParentRW says the parent still has a writable descriptor in
	// QEMU's fd sets (the disk QEMU was started with), to remove once the
	// parent is frozen.
	DropParentRW bool `json:"drop_parent_rw,omitempty"`
}

func (l Layers) nextPath() string { return filepath.Join(l.Dir, LayersDir, nextFile) }

// Next returns the record of the next overlay (ok false: none, or one that
// is not well formed).
func (l Layers) Next() (NextLayer, bool) {
	var n NextLayer
	b, err := os.ReadFile(l.nextPath())
	if err != nil || len(b) > 4096 || json.Unmarshal(b, &n) != nil || !layerName.MatchString(n.Layer) || !l.valid(n.Parent) {
		return NextLayer{}, false
	}
	return n, true
}

// SetNext records the next overlay (atomically; not synced: it is a hint,
// see above, and the switch it marks is resolved by asking QEMU).
func (l Layers) SetNext(n NextLayer) error {
	if !layerName.MatchString(n.Layer) || !l.valid(n.Parent) {
		return errors.New("layers: bad next layer")
	}
	b, _ := json.Marshal(n)
	return replaceFile(l.nextPath(), b, false)
}

// ClearNext forgets the next overlay record (the file stays: GC or the
// caller removes it).
func (l Layers) ClearNext() error {
	err := os.Remove(l.nextPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// NextOver returns the next overlay when it is ready to go over top: made
// over top (its header says so) and not itself the top.
func (l Layers) NextOver(top string) (NextLayer, bool) {
	n, ok := l.Next()
	if !ok || n.Layer == top || n.Parent != top {
		return NextLayer{}, false
	}
	if p, err := l.Parent(n.Layer); err != nil || p != top {
		return NextLayer{}, false
	}
	if _, empty := l.EmptyTop(n.Layer); !empty {
		return NextLayer{}, false
	}
	return n, true
}

// Switching reports whether a switch to the top may not have happened
// (see the top of this file), and the layer below it.
func (l Layers) Switching(top string) (NextLayer, bool) {
	n, ok := l.Next()
	return n, ok && n.Layer == top
}
