// Package diskimg reads an ext4 image that a guest wrote, on the host and
// without mounting it, through e2fsprogs' debugfs in catastrophic mode
// (-c: read-only, bitmaps not read). The image is hostile: every debugfs
// run is bounded in time and in the output read from it, and names from
// the image are never handed to debugfs: entries are addressed by inode
// number (<N>), so a name holding quotes, newlines or control characters
// cannot become part of a debugfs command (StatPath's path is the
// caller's, quoted as one argument). Nothing here follows a link or writes
// a host path the image names.
package diskimg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/caplog"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// RootIno is the inode of an ext4 filesystem's root directory.
const RootIno = 2

// Bounds of one debugfs run.
var (
	// CallTimeout bounds one debugfs run (a crafted image must not hang us).
	CallTimeout = 30 * time.Second
	// MaxListBytes bounds the output of one directory listing.
	MaxListBytes int64 = 16 << 20
	// MaxDirEntries bounds the entries of one directory that List or a
	// DiskView reads: the host holds a few hundred bytes per entry read,
	// so this, not the image, decides the memory a listing takes.
	MaxDirEntries = 1 << 20
)

const maxStderr = 64 << 10

// File type bits of an inode mode.
const (
	modeType = 0o170000
	modeDir  = 0o040000
	modeReg  = 0o100000
	modeLink = 0o120000
	modeChar = 0o020000
)

// Image is an ext4 image file. Budget, when set, bounds all its debugfs
// runs together (see Budget).
type Image struct {
	Path   string
	Budget *Budget
}

// Dirent is one directory entry.
type Dirent struct {
	Name string
	Ino  uint32
	Mode uint32 // type and permission bits, as stored
	Size int64  // as stored (0 for directories)
}

func (d Dirent) IsDir() bool  { return d.Mode&modeType == modeDir }
func (d Dirent) IsReg() bool  { return d.Mode&modeType == modeReg }
func (d Dirent) IsLink() bool { return d.Mode&modeType == modeLink }
func (d Dirent) IsChar() bool { return d.Mode&modeType == modeChar }

// Perm is the permission bits.
func (d Dirent) Perm() uint32 { return d.Mode & 0o777 }

// run runs one debugfs command and returns at most limit bytes of its
// output (truncated says more came).
func (im Image) run(ctx context.Context, cmd string, limit int64) (out []byte, truncated bool, stderr string, err error) {
	ctx, cancel, limit, err := im.Budget.begin(ctx, limit, true)
	if err != nil {
		return nil, false, "", err
	}
	defer cancel()
	c, done, err := im.command(ctx, "-c", "-R", cmd)
	if err != nil {
		return nil, false, "", err
	}
	defer done()
	errb := caplog.Head{Max: maxStderr}
	c.Stderr = &errb
	stdout, err := c.StdoutPipe()
	if err != nil {
		return nil, false, "", err
	}
	if err := c.Start(); err != nil {
		return nil, false, "", errdefs.Wrap(errdefs.ErrUnavailable, err, "install e2fsprogs", "run debugfs")
	}
	out, rerr := io.ReadAll(io.LimitReader(stdout, limit+1))
	im.Budget.spend(int64(len(out)))
	if int64(len(out)) > limit {
		out, truncated = out[:limit], true
		_ = c.Process.Kill()
	}
	werr := c.Wait()
	if ctx.Err() != nil && im.Budget.expired() {
		return nil, false, "", budgetErr("out of time")
	}
	if ctx.Err() != nil {
		return nil, false, "", errdefs.New(errdefs.ErrUnavailable, "the image may be damaged", "reading the workspace image took longer than %s", CallTimeout)
	}
	if rerr != nil {
		return nil, false, "", rerr
	}
	if werr != nil && !truncated {
		return nil, false, "", fmt.Errorf("debugfs %s: %w: %s", strings.Fields(cmd)[0], werr, errb.String())
	}
	return out, truncated, errb.String(), nil
}

// ErrTooManyEntries: a directory holds more entries than a listing may.
var ErrTooManyEntries = errors.New("too many directory entries")

// List returns the entries of directory ino, without "." and "..": at most
// MaxDirEntries of them, else an error wrapping ErrTooManyEntries.
func (im Image) List(ctx context.Context, ino uint32) ([]Dirent, error) {
	lists, whole, err := im.ListMany(ctx, []uint32{ino}, MaxDirEntries)
	if err != nil {
		return nil, err
	}
	if whole == 0 {
		return nil, TooManyEntries(fmt.Sprintf("<%d>", ino), MaxDirEntries)
	}
	return lists[0], nil
}

// TooManyEntries is the error for a directory (named name) holding more
// than max entries.
func TooManyEntries(name string, max int) error {
	return errdefs.Wrap(errdefs.ErrFailedPrecondition, ErrTooManyEntries, "start the workspace and use the guest tools",
		"%s holds more than %d entries", name, max)
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}

// Read returns at most max bytes of inode ino's content; truncated says
// there was more.
func (im Image) Read(ctx context.Context, ino uint32, max int64) ([]byte, bool, error) {
	out, truncated, _, err := im.run(ctx, fmt.Sprintf("cat <%d>", ino), max)
	return out, truncated, err
}

// maxLinkTarget bounds a symlink target (Linux: PATH_MAX).
const maxLinkTarget = 4096
