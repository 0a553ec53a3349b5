package workspace

import (
	"context"
	"fmt"
	"os"

	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// Host-side pushes (pyro's workspace_hostpush.go): a push into a stopped
// workspace writes a new raw root layer on the host, a copy of the upper
// layer with the pushed tree written into it, and names it the top only
// once it is whole. A kill at any point before leaves an unreachable
// layer file, which GC deletes; the workspace stays at its state before.

// StageDir mirrors the push source directory src into the empty private
// directory dest under the rules of a push (see stageDir): symlinks never
// followed, no devices, fifos or sockets, permissions and times kept.
// Files are hard-linked where stageDir may; changed reports whether one of
// them was written since (the caller then discards what it read from
// them, which may be torn).
func StageDir(ctx context.Context, src, dest string) (st tarutil.Stats, changed func() bool, err error) {
	st, linked, err := stageDir(ctx, src, dest, true)
	return st, linked.changed, err
}

// MaxHostPushCopy bounds the data of the upper layer a host push copies
// into its new layer: past it, the push goes through the guest, whose cost
// does not grow with what the upper layer already holds.
var MaxHostPushCopy int64 = 1 << 30

// NewPushRoot makes a new raw root layer that is a copy of the raw upper
// image upper (RawUpper's) and returns its name; the top is not changed.
// When move is set, upper is a private flattened copy, renamed into place
// instead of copied again.
func (l Layers) NewPushRoot(upper string, move bool) (string, error) {
	if err := os.MkdirAll(l.Path(LayersDir), 0o700); err != nil {
		return "", err
	}
	n, err := l.next()
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("%s/%d.raw", LayersDir, n)
	if move {
		return name, os.Rename(upper, l.Path(name))
	}
	_, _, err = CopyImage(upper, l.Path(name), MaxHostPushCopy, "the upper layer", "")
	return name, err
}
