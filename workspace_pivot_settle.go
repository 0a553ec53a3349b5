package pyro

import (
	"context"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// settleStopped settles, under the layer lock, a pivot that a killed
// running host push left under way (workspace_hostpush_running.go) in a
// stopped workspace, as its next boot would: the named top may be a layer
// QEMU never switched to, and a reader of the images (disk tools, export)
// then read a /workspace without what the guest wrote since. No QEMU runs:
// the caller holds the instance lock with no supervisor (WhileStopped).
func settleStopped(ctx context.Context, dir vmdir.Dir, rec instance.Record) error {
	l := layersOf(dir, rec)
	if _, ok := l.PivotUnderWay(); !ok {
		return nil
	}
	unlock, err := lockLayers(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	_, err = l.SettlePivot(nil)
	return err
}
