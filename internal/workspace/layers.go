package workspace

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/hostres"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// A layered workspace keeps /workspace as two images on the host: the
// baseline (BaseFile), an ext4 image built on the host from the seed with
// mke2fs -d and never written again, and the upper layer (DiskFile), an
// ext4 image the guest writes, overlaid on the baseline at /workspace.
// Every change since the baseline lives in the upper layer, so a diff reads
// only it, a reset to the baseline is a fresh empty upper layer, and a
// snapshot is a copy of the upper layer taken while the guest holds it
// frozen: its cost follows what changed since the baseline, not the size
// of the tree, and it is made at host speed.

// BaseFile is a layered workspace's baseline image.
const BaseFile = "base.ext4"

// Snapshot formats.
const (
	FormatTar   = ""      // a tar of /workspace (workspaces made before layers)
	FormatUpper = "upper" // a copy of the upper layer's image (<name>.img)
	FormatBase  = "base"  // the baseline of a layered workspace: BaseFile, empty upper
)

// BuildBase makes the baseline image at path, which PrepareBase made, from
// the tar stream src (nil: an empty /workspace). The archive is unpacked on
// the host under tarutil's rules (no escapes, no links followed, no
// devices), a seed directory (a *DirSource) staged under the same rules
// (stageDir), into a private directory beside path, which mke2fs -d turns
// into a journal-less ext4 image of size bytes (sparse), written in place:
// a guest may have the file open already (basegate.go). Once the image is
// whole and durable, its pending mark goes.
func BuildBase(ctx context.Context, path string, src io.Reader, size int64) (tarutil.Stats, error) {
	var st tarutil.Stats
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".seed-")
	if err != nil {
		return st, err
	}
	defer fsutil.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o700); err != nil {
		return st, err
	}
	tree := filepath.Join(tmp, "tree")
	ds, staged := src.(*DirSource)
	for links := staged; ; links = false {
		if err := os.Mkdir(tree, 0o755); err != nil {
			return st, err
		}
		var linked linkedFiles
		if staged {
			if st, linked, err = stageDir(ctx, ds.dir, tree, links, 0); err != nil {
				return st, fmt.Errorf("stage seed: %w", err)
			}
		} else if src != nil {
			if st, err = tarutil.ExtractTar(ctxReader{ctx, src}, tree); err != nil {
				return st, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "check the seed archive", "unpack seed")
			}
		}
		if err := writeBaseIndex(tree, filepath.Join(filepath.Dir(path), BaseIndexFile)); err != nil {
			return st, err
		}
		afterStage()
		if err := baseImage(ctx, path, tree, size); err != nil {
			return st, err
		}
		// A linked seed file (the caller's own) written to during the
		// build may be in the image torn or of another size than counted:
		// the tree is staged again with copies, which count what they
		// hold, and the image made again.
		if !links || !linked.changed() {
			break
		}
		if err := fsutil.RemoveAll(tree); err != nil {
			return st, err
		}
	}
	if err := fsutil.Sync(path); err != nil {
		return st, err
	}
	return st, os.Remove(pendingPath(path))
}

// afterStage is a test seam: it runs before each image of BuildBase.
var afterStage = func() {}

// baseImage makes the journal-less baseline image of tree at img (sparse,
// size bytes).
func baseImage(ctx context.Context, img, tree string, size int64) error {
	if err := mkfs(ctx, img, size, "-O", "^has_journal", "-L", "workspace-base", "-d", tree); err != nil {
		return err
	}
	// mke2fs adds an empty lost+found; /workspace shows only what the
	// seed holds (the baseline is never written, so never needs e2fsck's).
	if _, err := os.Lstat(filepath.Join(tree, "lost+found")); errors.Is(err, os.ErrNotExist) {
		if out, err := exec.CommandContext(ctx, "debugfs", "-w", "-R", "rmdir lost+found", img).CombinedOutput(); err != nil {
			return errdefs.Wrap(errdefs.ErrUnavailable, err, "install e2fsprogs", "debugfs: %s", strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// mkfs makes an ext4 image of size bytes (sparse) at img with extra
// mke2fs arguments. img is new, or empty at its size (PrepareBase): it is
// not truncated first, so a reader that has it open never sees it shrink.
func mkfs(ctx context.Context, img string, size int64, extra ...string) error {
	f, err := os.OpenFile(img, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "free space on the host", "size %s", img)
	}
	args := append([]string{"-q", "-F", "-t", "ext4", "-m", "0",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0"}, extra...)
	out, err := exec.CommandContext(ctx, "mke2fs", append(args, img)...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "Could not allocate") || strings.Contains(msg, "No space") {
			return errdefs.New(errdefs.ErrFailedPrecondition, "raise PYRO_WORKSPACE_DISK_MIB or seed less", "the seed does not fit the workspace disk: %s", msg)
		}
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "install e2fsprogs", "mke2fs: %s", msg)
	}
	return nil
}

// dataExtents calls fn for each data extent of f (SEEK_DATA/SEEK_HOLE):
// sparse images are read only where they hold data.
func dataExtents(f *os.File, fn func(off, n int64) error) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	for off := int64(0); off < size; {
		start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			return err
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if err := fn(start, end-start); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// imageWalk hashes f's data extents (offset, length, bytes) and its size,
// handing each chunk to put (nil: hash only). The digest does not depend
// on holes being read as zeros, so an 8 GiB sparse image costs what it
// holds.
func imageWalk(f *os.File, put func(b []byte, off int64) error) (string, int64, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var data int64
	err := dataExtents(f, func(off, n int64) error {
		writeInts(h, off, n)
		for n > 0 {
			m := int64(len(buf))
			if n < m {
				m = n
			}
			if _, err := f.ReadAt(buf[:m], off); err != nil {
				return err
			}
			h.Write(buf[:m])
			if put != nil {
				if err := put(buf[:m], off); err != nil {
					return err
				}
			}
			off += m
			n -= m
			data += m
		}
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	writeInts(h, -1, fi.Size())
	return hex.EncodeToString(h.Sum(nil)), data, nil
}

func writeInts(h hash.Hash, a, b int64) {
	var x [16]byte
	binary.BigEndian.PutUint64(x[:8], uint64(a))
	binary.BigEndian.PutUint64(x[8:], uint64(b))
	h.Write(x[:])
}

// ImageDigest returns the digest of an image's content (see imageWalk) and
// the bytes of data it holds.
func ImageDigest(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	return imageWalk(f, nil)
}

// CopyImage copies the sparse image src to dst (replaced atomically, made
// durable before it appears) and returns src's digest and data bytes. At
// most limit data bytes are copied (0: no limit); over that, or when the
// host's disk is full, dst is left as it was.
func CopyImage(src, dst string, limit int64, what, env string) (string, int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", 0, err
	}
	out, err := os.CreateTemp(filepath.Dir(dst), ".tmp-img-*")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(out.Name())
	var written int64
	sum, n, err := imageWalk(in, func(b []byte, off int64) error {
		written += int64(len(b))
		if limit > 0 && written > limit {
			return errdefs.New(errdefs.ErrFailedPrecondition, "raise "+env, "%s is over the host's cap of %d bytes", what, limit)
		}
		_, err := out.WriteAt(b, off)
		return err
	})
	if err == nil {
		err = out.Truncate(fi.Size())
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return "", 0, errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "free space on the host; the workspace is unchanged", "copy %s", what)
		}
		return "", 0, fmt.Errorf("copy %s: %w", what, err)
	}
	if err := os.Rename(out.Name(), dst); err != nil {
		return "", 0, err
	}
	return sum, n, fsutil.Sync(filepath.Dir(dst))
}

func (s Snapshots) imgPath(name string) string { return filepath.Join(s.Dir, name+".img") }

// writeRecord stores snap's record atomically (temp file, fsync, rename),
// refusing to replace one.
func (s Snapshots) writeRecord(snap Snapshot) error {
	b, _ := json.Marshal(snap)
	f, err := os.CreateTemp(s.Dir, ".tmp-rec-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(f.Name(), s.metaPath(snap.Name)); err != nil {
		return err
	}
	return fsutil.Sync(s.Dir)
}

// SaveBase records the baseline of a layered workspace: the image at base
// (not copied: it is never written again), with its digest.
func (s Snapshots) SaveBase(base string) (Snapshot, error) {
	sum, n, err := ImageDigest(base)
	if err != nil {
		return Snapshot{}, err
	}
	return s.RecordBase(sum, n)
}

// RecordBase records the baseline of a layered workspace whose image
// digest (ImageDigest) and data bytes the caller already has: made while
// the image was copied or built, instead of reading it once more.
func (s Snapshots) RecordBase(sum string, n int64) (Snapshot, error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return Snapshot{}, err
	}
	snap := Snapshot{Name: Baseline, CreatedAt: time.Now().UTC(), Bytes: n, SHA256: sum, Implicit: true, Format: FormatBase}
	return snap, s.writeRecord(snap)
}

// SaveUpper stores a copy of the upper layer image upper as snapshot name
// (the caller holds the guest's upper layer frozen meanwhile). It refuses
// to overwrite and keeps the host's snapshot caps.
func (s Snapshots) SaveUpper(name, upper string) (Snapshot, error) {
	if err := ValidateSnapshotName(name); err != nil {
		return Snapshot{}, err
	}
	lim, err := s.admit(name)
	if err != nil {
		return Snapshot{}, err
	}
	sum, n, err := CopyImage(upper, s.imgPath(name), lim.SnapshotBytes, "snapshot "+name, hostres.SnapshotBytesEnv)
	if err != nil {
		return Snapshot{}, err
	}
	snap := Snapshot{Name: name, CreatedAt: time.Now().UTC(), Bytes: n, SHA256: sum, Format: FormatUpper}
	if err := s.writeRecord(snap); err != nil {
		_ = os.Remove(s.imgPath(name))
		return Snapshot{}, err
	}
	return snap, nil
}

// VerifyLayered checks a layered workspace's snapshot name against its
// digest and returns the upper image to restore ("" for the baseline: an
// empty upper layer; then base is what was verified). A damaged snapshot is
// never restored.
func (s Snapshots) VerifyLayered(name, base string) (string, error) {
	snap, err := s.Get(name)
	if err != nil {
		return "", err
	}
	p := s.imgPath(name)
	switch snap.Format {
	case FormatBase:
		p = base
	case FormatUpper:
	default:
		return "", errdefs.New(errdefs.ErrFailedPrecondition, "delete it, or restore another snapshot", "snapshot %q is not a layer snapshot", name)
	}
	sum, _, err := ImageDigest(p)
	if err != nil {
		return "", errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "", "snapshot %q is missing its data", name)
	}
	if sum != snap.SHA256 {
		return "", errdefs.New(errdefs.ErrFailedPrecondition, "restore another snapshot", "snapshot %q is damaged (sha256 %s, recorded %s)", name, sum[:12], snap.SHA256[:12])
	}
	if snap.Format == FormatBase {
		return "", nil
	}
	return p, nil
}

// ctxReader ends a read of r once ctx ends, so a canceled build stops
// unpacking at once.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
