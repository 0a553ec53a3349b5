// Package diskimg reads an ext4 image that a guest wrote, on the host and
// without mounting it, through e2fsprogs' debugfs in catastrophic mode
// (-c: read-only, bitmaps not read). The image is hostile: every debugfs
// run is bounded in time and in the output read from it, and names from
// the image are never handed to debugfs: entries are addressed by inode
// number (<N>), so a name holding quotes, newlines or control characters
// cannot become part of a debugfs command. Nothing here follows a link or
// writes a host path the image names.
package diskimg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

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
	c := exec.CommandContext(ctx, "debugfs", "-c", "-R", cmd, im.Path)
	c.Env = debugfsEnv
	var errb capBuf
	errb.max = maxStderr
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

// capBuf keeps the first max bytes written to it.
type capBuf struct {
	bytes.Buffer
	max int
}

func (b *capBuf) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// lsEntry matches one line of `ls -p`: /INO/MODE/UID/GID/NAME/SIZE/ and a
// newline. A name never holds '/' (nor NUL), so it ends at the next '/'
// whatever else it holds (newlines included).
var lsEntry = regexp.MustCompile(`^/(\d+)/(\d+)/\d+/\d+/([^/]*)/(\d*)/\n`)

// ErrNotDir: the inode is not a directory.
var ErrNotDir = errors.New("not a directory")

// List returns the entries of directory ino, without "." and "..".
func (im Image) List(ctx context.Context, ino uint32) ([]Dirent, error) {
	out, truncated, stderr, err := im.run(ctx, fmt.Sprintf("ls -p <%d>", ino), MaxListBytes)
	if err != nil {
		return nil, err
	}
	if truncated && im.Budget.spent() {
		return nil, budgetErr("too much listing output")
	}
	if truncated {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "", "a directory listing is larger than %d bytes", MaxListBytes)
	}
	if strings.Contains(stderr, "not a directory") {
		return nil, ErrNotDir
	}
	var ents []Dirent
	for rest := out; len(rest) > 0; {
		if rest[0] == '\n' { // ls ends with an empty line
			rest = rest[1:]
			continue
		}
		m := lsEntry.FindSubmatch(rest)
		if m == nil {
			return nil, fmt.Errorf("unexpected debugfs output at %q", truncate(rest, 80))
		}
		rest = rest[len(m[0]):]
		name := string(m[3])
		if name == "." || name == ".." || name == "" {
			continue
		}
		n, err1 := strconv.ParseUint(string(m[1]), 10, 32)
		mode, err2 := strconv.ParseUint(string(m[2]), 8, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("unexpected debugfs entry %q", truncate(m[0], 80))
		}
		size, _ := strconv.ParseInt(string(m[4]), 10, 64)
		if size < 0 {
			size = 0
		}
		ents = append(ents, Dirent{Name: name, Ino: uint32(n), Mode: uint32(mode), Size: size})
	}
	return ents, nil
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
