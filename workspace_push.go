package pyro

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Sync push at host speed (issue #15). Measured in a TCG guest: a push
// streamed through the agent channel and extracted through the guest's
// page cache moves ~15 MiB/s (a buffered 196 MiB write with fsync alone
// takes 3.7 s), while the same guest reads a virtio disk with O_DIRECT at
// ~520 MB/s and writes /workspace with O_DIRECT at ~310 MB/s: direct I/O
// is QEMU's DMA at host speed, the guest's CPU only submits requests. So a
// large push into a layered workspace goes through its transfer disk: the
// host writes the push's tar there, and the guest extracts it with direct
// I/O under the same archive rules (internal/agent/pushdisk.go). Small
// pushes, workspaces without the disk and archives that do not fit stream
// through the agent as before.

// TransferDisk: a push written by the host to the workspace's transfer
// disk, which the guest copied with direct I/O.
const TransferDisk = "disk"

// pushDiskMin is the smallest push that goes through the transfer disk:
// below it the agent channel costs less than the disk's round trip.
const pushDiskMin = 1 << 20

// pushTar extracts the tar stream src at dest in the running workspace
// and says which path carried it (TransferDisk or TransferGuest).
func pushTar(ctx context.Context, dir vmdir.Dir, rec instance.Record, agent *agentapi.Client, dest string, src io.Reader) (agentapi.PushResult, string, error) {
	stream := func(r io.Reader) (agentapi.PushResult, string, error) {
		res, err := agent.PushTar(ctx, dest, workspace.Root, r)
		return res, TransferGuest, err
	}
	head := make([]byte, pushDiskMin)
	n, err := io.ReadFull(src, head)
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return stream(bytes.NewReader(head[:n]))
	case err != nil:
		return agentapi.PushResult{}, "", err
	}
	all := io.MultiReader(bytes.NewReader(head), src)
	if !layered(rec) {
		return stream(all)
	}
	f, err := os.OpenFile(dir.Path(workspace.TransferFile), os.O_RDWR, 0)
	if err != nil {
		return stream(all) // a guest started without one
	}
	defer f.Close()
	// One push at a time owns the disk's content; the next one waits for
	// it as long as its own context lets it.
	if err := fsutil.LockContext(ctx, f); err != nil {
		if ctx.Err() != nil {
			return agentapi.PushResult{}, "", errdefs.Wrap(errdefs.ErrUnavailable, err,
				"another push to this workspace is still running: retry once it ends, or allow this one more time",
				"wait for the workspace's transfer disk")
		}
		return stream(all)
	}
	length, more, err := workspace.FillTransfer(f, all)
	defer func() { _ = workspace.ClearTransfer(f, length) }()
	if err != nil {
		return agentapi.PushResult{}, "", errdefs.Wrap(errdefs.ErrUnavailable, err, "", "write the transfer disk")
	}
	written := io.NewSectionReader(f, 0, length)
	// Too large for the disk (or the host's disk is full), or not whole
	// tar blocks (a damaged archive gets the streamed push's own answer).
	if more || length%512 != 0 {
		return stream(io.MultiReader(written, all))
	}
	fi, err := f.Stat()
	if err != nil {
		return stream(written)
	}
	res, err := agent.PushDisk(ctx, dest, workspace.Root, length, fi.Size())
	if errors.Is(err, errdefs.ErrNotFound) {
		return stream(written) // the guest has no transfer disk: nothing was extracted
	}
	return res, TransferDisk, err
}
