package pyro

import (
	"context"
	"errors"
	"io"
	"os/exec"
	"time"

	"github.com/pyro-mcp/pyro/internal/diskimg"
	"github.com/pyro-mcp/pyro/internal/hostres"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/tarutil"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Transfers at host speed (issue #15). Under software emulation every byte
// the guest agent streams costs guest CPU; a layered workspace's tree is
// also on the host, in its images, and reading it there costs host time
// only. Results say which path served them (Transfer).

// Transfer paths.
const (
	TransferHost  = "host"  // read from or written to the images on the host
	TransferGuest = "guest" // streamed through the guest agent
)

// exportHost serves an export from a layered workspace's images: a stopped
// workspace's under its lock (no guest boots meanwhile), a running one's
// while the guest holds its upper layer frozen (flushed, writers blocked).
// The images give the same tar stream the agent would send, and
// workspace.Export applies its rules to it. ok is false when this path
// cannot serve (host-compat, no debugfs, a journal to replay, a guest that
// does not freeze, a path through a symlink, a tree over the disk tools'
// budget): then the guest path runs, with nothing written at out.
func (c *Client) exportHost(ctx context.Context, dir vmdir.Dir, rec instance.Record, guest, out string, overwrite bool) (st tarutil.Stats, kind string, ok bool, err error) {
	if !layered(rec) {
		return st, "", false, nil
	}
	if _, err := exec.LookPath("debugfs"); err != nil {
		return st, "", false, nil
	}
	// The upper layer as a raw image (a chain of checkpoint layers is
	// flattened first, see workspace.Layers).
	read := func(ctx context.Context, raw func(context.Context) (string, func(), error)) {
		upper, done, rerr := raw(ctx)
		if rerr != nil {
			return // ok stays false: the guest serves
		}
		defer done()
		st, kind, ok, err = exportFromImages(ctx, rec.WorkspaceBase, upper, guest, out, overwrite)
	}
	if c.lc.Observe(ctx, dir, rec).State == instance.Running {
		touchActivity(dir)
		unlock, lerr := lockLayers(ctx, dir) // no checkpoint moves the top meanwhile
		if lerr != nil {
			return st, "", false, nil
		}
		defer unlock()
		// The named top may be a layer QEMU never switched to (a pivot a
		// killed running host push left under way): asked of QEMU first.
		if settlePivot(ctx, dir, layersOf(dir, rec)) != nil {
			return st, "", false, nil
		}
		agent := c.lc.Client(dir)
		defer agent.Close()
		if agent.FreezeLayer(ctx, freezeFor) != nil {
			return st, "", false, nil
		}
		defer func() { _ = agent.ThawLayer(context.WithoutCancel(ctx)) }()
		// The guest thaws by itself after freezeFor: stop reading before.
		fctx, cancel := context.WithTimeout(ctx, freezeFor-5*time.Second)
		defer cancel()
		read(fctx, layersOf(dir, rec).RawUpperFrozen)
		return st, kind, ok, err
	}
	if werr := c.lc.WhileStopped(ctx, dir, rec, func() error {
		if settleStopped(ctx, dir, rec) == nil { // workspace_pivot_settle.go
			read(ctx, layersOf(dir, rec).RawUpper)
		}
		return nil
	}); werr != nil {
		return st, "", false, nil // it started meanwhile: the guest serves
	}
	return st, kind, ok, err
}

// exportFromImages reads guest from the baseline and raw upper images
// (which nobody writes meanwhile) into out.
func exportFromImages(ctx context.Context, base, upper, guest, out string, overwrite bool) (tarutil.Stats, string, bool, error) {
	var st tarutil.Stats
	v, err := workspace.OpenDiskView(ctx, base, upper)
	if err != nil {
		return st, "", false, nil
	}
	if clean, err := v.Clean(ctx); err != nil || !clean {
		return st, "", false, nil
	}
	// Any question about the path itself (missing, through a link) gets
	// the guest's own answer.
	n, err := v.Lookup(ctx, guest)
	if err != nil {
		return st, "", false, nil
	}
	kind := workspace.ExportKind(n)
	limit := hostres.Load().ExportBytes
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(v.WriteTar(ctx, n, pw, limit)) }()
	st, err = workspace.Export(hostres.CapReader(pr, limit, "export of "+guest, hostres.ExportBytesEnv), guest, kind, out, overwrite)
	pr.CloseWithError(errors.New("export ended"))
	if errors.Is(err, diskimg.ErrBudget) {
		return tarutil.Stats{}, "", false, nil
	}
	return st, kind, true, err
}
