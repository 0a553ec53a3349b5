package workspace

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/errdefs"
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
// them, which may be torn). Staging stops with ErrStageTooLarge past
// maxBytes of file content (0: no bound): files it cannot link are copies
// on the host's disk, and a source larger than the workspace disk cannot
// be pushed anyway.
func StageDir(ctx context.Context, src, dest string, maxBytes int64) (st tarutil.Stats, changed func() bool, err error) {
	st, linked, err := stageDir(ctx, src, dest, true, maxBytes)
	return st, linked.changed, err
}

// MaxHostPushCopy bounds the data of the upper layer a host push copies
// into its new layer: past it, the push goes through the guest, whose cost
// does not grow with what the upper layer already holds.
var MaxHostPushCopy int64 = 1 << 30

// Range is a byte range [Off, Off+Len) of an image.
type Range struct{ Off, Len int64 }

// NewPushRoot makes a new raw root layer that is a copy of the raw upper
// image upper (RawUpper's) and returns its name; the top is not changed.
// When move is set, upper is a private flattened copy, renamed into place
// instead of copied again. The ranges skip are left holes in the copy:
// the body of a clean journal, whose content nothing reads (a guest
// mounting the layer finds the journal empty in its superblock, which is
// copied, and writes the body before it reads it).
func (l Layers) NewPushRoot(upper string, move bool, skip ...Range) (string, error) {
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
	if err := sparseCopy(upper, l.Path(name), MaxHostPushCopy, skip...); err != nil {
		_ = os.Remove(l.Path(name))
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return "", errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "free space on the host; the workspace is unchanged", "copy the upper layer")
		}
		return "", err
	}
	return name, nil
}

// ErrOverCopyCap: the upper layer holds more than a host push copies
// (MaxHostPushCopy); the push goes through the guest.
var ErrOverCopyCap = errors.New("upper layer over the host push's copy cap")

// sparseCopy copies the data extents of src to the new file dst (holes
// stay holes) in the kernel (copy_file_range), at most limit data bytes,
// leaving out the ranges skip (holes in dst). It does not sync: the writer
// that follows (hostwrite.Write) syncs the whole file before the layer is
// used, and until then nothing refers to it.
func sparseCopy(src, dst string, limit int64, skip ...Range) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := out.Truncate(fi.Size()); err != nil {
		return err
	}
	skip = slices.Clone(skip)
	slices.SortFunc(skip, func(a, b Range) int { return cmp.Compare(a.Off, b.Off) })
	var copied int64
	copyRange := func(from, to int64) error {
		// The parts of [from, to) outside every skipped range.
		for _, r := range skip {
			if r.Off+r.Len <= from || r.Len <= 0 {
				continue
			}
			if r.Off >= to {
				break
			}
			if r.Off > from {
				if err := copyData(in, out, from, r.Off, &copied, limit); err != nil {
					return err
				}
			}
			from = max(from, r.Off+r.Len)
			if from >= to {
				return nil
			}
		}
		return copyData(in, out, from, to, &copied, limit)
	}
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if err := copyRange(data, hole); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyData copies [from, to) of in to the same offsets of out, counting
// it in *copied, at most limit bytes in all.
func copyData(in, out *os.File, from, to int64, copied *int64, limit int64) error {
	if *copied += to - from; *copied > limit {
		return ErrOverCopyCap
	}
	for r, w := from, from; r < to; {
		n, err := unix.CopyFileRange(int(in.Fd()), &r, int(out.Fd()), &w, int(to-r), 0)
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
	}
	return nil
}
