package workspace

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// A host push into a workspace whose upper layer is a chain (one that
// takes checkpoints, or has snapshots) needs the chain as one raw image:
// debugfs reads and writes raw ext4. qemu-img convert made it in 70-140 ms
// on this 2-core host under load (a process whose start alone costs
// ~50 ms, then every block's status asked through the chain), and its copy
// held the raw root's journal body, which the push's final sync then
// wrote out. The chain's overlays are pyro's own qcow2 files (qcow2.go:
// 64 KiB clusters, no compression, no external data, no extended L2,
// refused by ReadOverlay otherwise), so the copy is made here, in the
// kernel: the raw root's data extents (copy_file_range, holes kept), then
// each overlay's clusters over it, root first, read from its L1 and L2
// tables. A cluster an overlay marks as zero becomes a hole. What this
// reader does not know (a compressed cluster, a table outside its file, a
// virtual size other than the root's) leaves the work to qemu-img
// (RawUpper), which reads any qcow2.
//
// The overlays are written by QEMU, a host process that runs the guest
// (the guest writes data, never the tables), and read only when the
// guest's writes are flushed (its /workspace released or frozen, or no
// QEMU runs): the same footing as qemu-img's read of them. Every table
// offset is still checked against the file's size before it is read.

// errFlattenUnsupported: the chain holds something flattenChain does not
// read; qemu-img does it.
var errFlattenUnsupported = errors.New("chain layout not flattened in-process")

// FlattenedUpper is RawUpper for the host push: a chain is flattened in
// the kernel (flattenChain) into a private sparse copy, which done
// removes; a chain it does not read goes through RawUpper (qemu-img).
// The guest's writes to the chain are flushed (see above); the caller
// holds the layer lock.
func (l Layers) FlattenedUpper(ctx context.Context) (path string, done func(), err error) {
	if !l.Chained() {
		return l.Disk, func() {}, nil
	}
	top, err := l.Top()
	if err != nil {
		return "", nil, err
	}
	chain, err := l.Chain(top)
	if err != nil {
		return "", nil, err
	}
	if l.raw(top) {
		return l.Path(top), func() {}, nil
	}
	out := filepath.Join(l.Dir, fmt.Sprintf(".flat-%d.raw", os.Getpid()))
	_ = os.Remove(out)
	paths := make([]string, len(chain))
	for i, n := range chain {
		paths[i] = l.Path(n)
	}
	switch err := flattenChain(ctx, paths, out); {
	case err == nil:
		return out, func() { _ = os.Remove(out) }, nil
	case errors.Is(err, errFlattenUnsupported):
		_ = os.Remove(out)
		return l.RawUpper(ctx)
	default:
		_ = os.Remove(out)
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return "", nil, fmt.Errorf("flatten the workspace's layers (free space on the host): %w", err)
		}
		return "", nil, fmt.Errorf("flatten the workspace's layers: %w", err)
	}
}

// flattenChain writes the chain (a raw root, then qcow2 overlays, each
// backed by the one before) as one sparse raw image at out, which must
// not exist. It does not sync (the push's writer syncs the image whole).
func flattenChain(ctx context.Context, chain []string, out string) error {
	if len(chain) == 0 {
		return errFlattenUnsupported
	}
	root, err := os.Stat(chain[0])
	if err != nil {
		return err
	}
	size := root.Size()
	// The overlays are checked (header, size) before anything is copied.
	for _, p := range chain[1:] {
		info, err := ReadOverlay(p)
		if err != nil {
			return fmt.Errorf("%w: %w", errFlattenUnsupported, err)
		}
		if info.Size != size {
			return fmt.Errorf("%w: %s claims %d bytes over a %d-byte root", errFlattenUnsupported, p, info.Size, size)
		}
	}
	if err := sparseCopy(chain[0], out, math.MaxInt64); err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range chain[1:] {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := applyOverlay(p, f, size); err != nil {
			return err
		}
	}
	return nil
}

// qcow2 table entries: bits 9-55 an offset in the file; an L2 entry's bit
// 62 marks a compressed cluster, bit 0 one that reads as zeros.
const (
	qcowOffsetMask = 0x00fffffffffffe00
	qcowCompressed = 1 << 62
	qcowZero       = 1
	qcowL2Entries  = qcowCluster / 8
)

// applyOverlay writes what the qcow2 overlay at p holds (its allocated
// clusters; holes for its zero clusters) over out, a raw image of size
// bytes. Runs of clusters adjacent both in the file and in the disk are
// copied in one call.
func applyOverlay(p string, out *os.File, size int64) error {
	in, err := os.Open(p)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	fsize := fi.Size()
	h := make([]byte, 48)
	if _, err := in.ReadAt(h, 0); err != nil {
		return err
	}
	be := binary.BigEndian
	l1Size := int64(be.Uint32(h[36:]))
	l1Off := int64(be.Uint64(h[40:]))
	clusters := (size + qcowCluster - 1) / qcowCluster
	if l1Size > (clusters+qcowL2Entries-1)/qcowL2Entries || l1Off%qcowCluster != 0 || l1Off+l1Size*8 > fsize {
		return fmt.Errorf("%w: %s: L1 table", errFlattenUnsupported, p)
	}
	l1 := make([]byte, l1Size*8)
	if _, err := in.ReadAt(l1, l1Off); err != nil {
		return err
	}
	// A run of data clusters waiting to be copied: disk offset, file
	// offset, length.
	var runDisk, runFile, runLen int64
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		r, w := runFile, runDisk
		for end := runFile + runLen; r < end; {
			n, err := unix.CopyFileRange(int(in.Fd()), &r, int(out.Fd()), &w, int(end-r), 0)
			if err != nil {
				return err
			}
			if n == 0 {
				return io.ErrUnexpectedEOF
			}
		}
		runLen = 0
		return nil
	}
	l2 := make([]byte, qcowCluster)
	for i := int64(0); i < l1Size; i++ {
		l2Off := int64(be.Uint64(l1[8*i:]) & qcowOffsetMask)
		if l2Off == 0 {
			continue // every cluster of this span reads from the backing
		}
		if l2Off%qcowCluster != 0 || l2Off+qcowCluster > fsize {
			return fmt.Errorf("%w: %s: L2 table at %d", errFlattenUnsupported, p, l2Off)
		}
		if _, err := in.ReadAt(l2, l2Off); err != nil {
			return err
		}
		for j := int64(0); j < qcowL2Entries; j++ {
			e := be.Uint64(l2[8*j:])
			if e&^(1<<63) == 0 {
				continue // unallocated: the backing's
			}
			disk := (i*qcowL2Entries + j) * qcowCluster
			if disk >= size || e&qcowCompressed != 0 {
				return fmt.Errorf("%w: %s: cluster entry %#x at %d", errFlattenUnsupported, p, e, disk)
			}
			n := min(int64(qcowCluster), size-disk)
			if e&qcowZero != 0 {
				if err := flush(); err != nil {
					return err
				}
				if err := unix.Fallocate(int(out.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, disk, n); err != nil {
					return err
				}
				continue
			}
			off := int64(e & qcowOffsetMask)
			if off == 0 || off%qcowCluster != 0 || off+n > fsize {
				return fmt.Errorf("%w: %s: data cluster at %d", errFlattenUnsupported, p, off)
			}
			if runLen > 0 && runDisk+runLen == disk && runFile+runLen == off {
				runLen += n
				continue
			}
			if err := flush(); err != nil {
				return err
			}
			runDisk, runFile, runLen = disk, off, n
		}
	}
	return flush()
}
