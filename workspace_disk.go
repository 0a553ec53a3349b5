package pyro

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/hostres"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Disk tools read a STOPPED workspace's /workspace from its images on the
// host without booting it (see workspace.DiskView: the images are
// guest-written, so every read is bounded and no link is followed). On a
// running workspace they are failed_precondition: stop it first.

// withDiskView opens a stopped workspace's /workspace under its lock.
func (c *Client) withDiskView(ctx context.Context, id string, f func(rec instance.Record, v *workspace.DiskView) error) (instance.Record, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return rec, err
	}
	if rec.WorkspaceDisk == "" {
		return rec, errdefs.New(errdefs.ErrFailedPrecondition, "", "workspace %q has no disk image", rec.ID)
	}
	err = c.lc.WhileStopped(ctx, dir, rec, func() error {
		if err := settleStopped(ctx, dir, rec); err != nil { // workspace_pivot_settle.go
			return err
		}
		upper, done, err := layersOf(dir, rec).RawUpper(ctx)
		if err != nil {
			return err
		}
		defer done()
		v, err := workspace.OpenDiskView(ctx, rec.WorkspaceBase, upper)
		if err != nil {
			return err
		}
		return f(rec, v)
	})
	return rec, err
}

// ListWorkspaceDisk lists path (default /workspace) of a stopped
// workspace from its disk image, like ListWorkspaceFiles.
func (c *Client) ListWorkspaceDisk(ctx context.Context, id, path string, recursive bool) (WorkspaceFileList, error) {
	guest, err := workspace.GuestPath(path)
	if err != nil {
		return WorkspaceFileList{}, err
	}
	out := WorkspaceFileList{Path: guest, Recursive: recursive, Entries: []WorkspaceFileEntry{}}
	rec, err := c.withDiskView(ctx, id, func(_ instance.Record, v *workspace.DiskView) error {
		n, err := v.Lookup(ctx, guest)
		if err != nil {
			return err
		}
		add := func(n workspace.DiskNode) error {
			if len(out.Entries) >= agentapi.MaxListEntries {
				out.Truncated = true
				return workspace.ErrWalkLimit
			}
			target, err := v.Readlink(ctx, n)
			if err != nil {
				return err
			}
			out.Entries = append(out.Entries, entryFrom(agentapi.FileEntry{Path: n.Path, Type: n.Type, SizeBytes: n.Size, Mode: n.Perm, LinkTarget: target}))
			return nil
		}
		if n.Type != "dir" {
			return add(n)
		}
		if recursive {
			err := v.Walk(ctx, n, agentapi.MaxListEntries+1, add)
			if errors.Is(err, workspace.ErrWalkLimit) {
				out.Truncated = true
				return nil
			}
			return err
		}
		kids, err := v.ReadDir(ctx, n)
		if err != nil {
			return err
		}
		for _, k := range kids {
			if err := add(k); err != nil {
				if errors.Is(err, workspace.ErrWalkLimit) {
					return nil
				}
				return err
			}
		}
		return nil
	})
	out.WorkspaceID = rec.ID
	if err != nil {
		return WorkspaceFileList{}, err
	}
	return out, nil
}

// ReadWorkspaceDisk reads a file of a stopped workspace from its disk
// image, like ReadWorkspaceFile.
func (c *Client) ReadWorkspaceDisk(ctx context.Context, id, path string, opts *ReadWorkspaceFileOptions) (WorkspaceFile, error) {
	var o ReadWorkspaceFileOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultReadMaxBytes
	}
	if o.MaxBytes < 1 || o.MaxBytes > MaxReadBytes {
		return WorkspaceFile{}, errdefs.New(errdefs.ErrInvalidArgument, "use 1..4194304", "max bytes %d out of range", o.MaxBytes)
	}
	guest, err := workspace.GuestPath(path)
	if err != nil {
		return WorkspaceFile{}, err
	}
	var res WorkspaceFile
	var content []byte
	rec, err := c.withDiskView(ctx, id, func(_ instance.Record, v *workspace.DiskView) error {
		n, err := v.Lookup(ctx, guest)
		if err != nil {
			return err
		}
		b, truncated, err := v.Read(ctx, n, o.MaxBytes)
		if err != nil {
			return err
		}
		content = b
		res = WorkspaceFile{Path: guest, SizeBytes: max(n.Size, int64(len(b))), MaxBytes: o.MaxBytes, Truncated: truncated}
		return nil
	})
	if err != nil {
		return WorkspaceFile{}, err
	}
	res.WorkspaceID = rec.ID
	dir, _, _ := c.wsDir(rec.ID)
	return res, fillContent(&res, content, o.Base64, instance.Redactor(dir))
}

// DiskExport says what ExportWorkspaceDisk wrote.
type DiskExport struct {
	WorkspaceID string `json:"workspace_id"`
	OutputPath  string `json:"output_path"`
	// SizeBytes is the image's (sparse) size; Bytes the file content in it.
	SizeBytes    int64 `json:"size_bytes"`
	FileCount    int   `json:"file_count"`
	DirCount     int   `json:"dir_count"`
	SymlinkCount int   `json:"symlink_count"`
	Bytes        int64 `json:"bytes"`
	// SkippedCount counts what was left out: devices, fifos, sockets,
	// lost+found and pyro's own staging files.
	SkippedCount int `json:"skipped_count"`
}

// ExportWorkspaceDisk writes a stopped workspace's /workspace to outputPath
// as a raw ext4 image (mount it with `mount -o loop,ro`, or read it with
// debugfs), rebuilt on the host from the merged tree with pyro's own
// modes: no owners, setuid bits or devices from the guest, runtime state
// left out. outputPath must not exist unless Overwrite is set.
func (c *Client) ExportWorkspaceDisk(ctx context.Context, id, outputPath string, opts *ExportOptions) (DiskExport, error) {
	var o ExportOptions
	if opts != nil {
		o = *opts
	}
	if outputPath == "" {
		return DiskExport{}, errdefs.New(errdefs.ErrInvalidArgument, "pass --output HOST_PATH", "no output path")
	}
	out, _ := filepath.Abs(outputPath)
	if fi, err := os.Lstat(out); err == nil && (!o.Overwrite || !fi.Mode().IsRegular()) {
		return DiskExport{}, errdefs.New(errdefs.ErrAlreadyExists, "choose another path, or pass --overwrite (for a regular file)", "output %q exists", out)
	}
	var st workspace.DiskExportStats
	rec, err := c.withDiskView(ctx, id, func(_ instance.Record, v *workspace.DiskView) error {
		var err error
		st, err = workspace.ExportDisk(ctx, v, out, hostres.Load().ExportBytes)
		return err
	})
	if err != nil {
		return DiskExport{}, err
	}
	res := DiskExport{WorkspaceID: rec.ID, OutputPath: out, FileCount: st.Files, DirCount: st.Dirs, SymlinkCount: st.Symlinks, Bytes: st.Bytes, SkippedCount: st.Skipped}
	if fi, err := os.Stat(out); err == nil {
		res.SizeBytes = fi.Size()
	}
	if dir, _, err := c.wsDir(rec.ID); err == nil {
		c.recordEvent(dir, workspace.Event{Kind: workspace.EventDiskExport, Target: out, Count: st.Files, Bytes: st.Bytes})
	}
	return res, nil
}
