package workspace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// A qcow2 overlay is an empty copy-on-write layer over a backing image:
// QEMU writes the guest's changes into it and reads everything else from
// the backing. Making one costs a 256 KiB file whatever the size of what
// lies below, which is what makes a snapshot O(1). pyro writes the header
// itself (qemu-img create costs ~50 ms of process start and fsync) and
// reads it back to check a layer's structure and its link to its backing.
//
// Layout (64 KiB clusters, version 3, 16-bit refcounts): cluster 0 the
// header, its extensions and the backing file's name; cluster 1 the
// refcount table; cluster 2 its first refcount block; cluster 3 the L1
// table; then one L2 table per L1 entry, all zero (holes in a sparse
// file: every cluster unallocated reads from the backing). qemu-img leaves
// the L1 table empty instead, and QEMU then allocates an L2 table on the
// first write into each 512 MiB of the disk and writes its L1 entry
// through with a flush of its own: measured with qemu-io, the first
// ext4-like commit into a fresh overlay (five 4 KiB writes, a flush)
// costs 8 fdatasyncs that way and 2 with the tables in place. The guest's
// first sync after each checkpoint pays that, so the tables are made here.

const (
	qcowMagic       = 0x514649fb // "QFI\xfb"
	qcowClusterBits = 16
	qcowCluster     = 1 << qcowClusterBits
	qcowHeaderLen   = 112 // version 3 header with the compression type byte
	qcowExtBackFmt  = 0xe2792aca
	// maxBackingName bounds the backing file's name a header may carry
	// (QEMU's own limit is 1023).
	maxBackingName = 1023
)

// CreateOverlay writes an empty qcow2 overlay of size bytes at path (which
// must not exist) whose backing is backing (a name relative to path's
// directory) in format backingFmt ("raw" or "qcow2"). The file is made
// durable before it returns.
func CreateOverlay(path, backing, backingFmt string, size int64) error {
	if backing == "" || len(backing) > maxBackingName || strings.ContainsRune(backing, 0) {
		return fmt.Errorf("overlay %s: bad backing name %q", path, backing)
	}
	if backingFmt != "raw" && backingFmt != "qcow2" {
		return fmt.Errorf("overlay %s: bad backing format %q", path, backingFmt)
	}
	l1Size := overlayL1Size(size)
	if size <= 0 || l1Size*8 > qcowCluster {
		return fmt.Errorf("overlay %s: size %d out of range", path, size)
	}
	clusters := overlayClusters(l1Size)
	buf := make([]byte, 4*qcowCluster)
	be := binary.BigEndian
	h := buf[:qcowCluster]
	be.PutUint32(h[0:], qcowMagic)
	be.PutUint32(h[4:], 3)
	be.PutUint32(h[20:], qcowClusterBits)
	be.PutUint64(h[24:], uint64(size))
	be.PutUint32(h[36:], uint32(l1Size))
	be.PutUint64(h[40:], 3*qcowCluster)   // L1 table
	be.PutUint64(h[48:], 1*qcowCluster)   // refcount table
	be.PutUint32(h[56:], 1)               // refcount table clusters
	be.PutUint32(h[96:], 4)               // refcount order: 16 bits
	be.PutUint32(h[100:], qcowHeaderLen)  // header length
	off := qcowHeaderLen                  // extensions follow the header
	be.PutUint32(h[off:], qcowExtBackFmt) // backing format
	be.PutUint32(h[off+4:], uint32(len(backingFmt)))
	copy(h[off+8:], backingFmt)
	off += 8 + (len(backingFmt)+7)/8*8
	off += 8                         // end of extensions (type 0, length 0)
	be.PutUint64(h[8:], uint64(off)) // backing file name
	be.PutUint32(h[16:], uint32(len(backing)))
	copy(h[off:], backing)
	// The refcount table points at the refcount block, which counts the
	// clusters in use; each L1 entry points at its L2 table, used once
	// (the "copied" flag QEMU sets on a cluster whose refcount is 1).
	be.PutUint64(buf[1*qcowCluster:], 2*qcowCluster)
	for i := int64(0); i < clusters; i++ {
		be.PutUint16(buf[2*qcowCluster+2*i:], 1)
	}
	for i := int64(0); i < l1Size; i++ {
		be.PutUint64(buf[3*qcowCluster+8*i:], uint64(l2Table(i))|qcowCopied)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err = f.Write(buf); err == nil {
		err = f.Truncate(clusters * qcowCluster) // the L2 tables: holes
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("overlay %s: %w", path, err)
	}
	return nil
}

// qcowCopied is an L1/L2 entry's flag for a cluster used once.
const qcowCopied = 1 << 63

// overlayL1Size is the L1 entries (and L2 tables) of an overlay of size
// bytes: one per 512 MiB (an L2 table maps 8192 clusters of 64 KiB).
func overlayL1Size(size int64) int64 {
	l2Span := int64(qcowCluster) * (qcowCluster / 8)
	return (size + l2Span - 1) / l2Span
}

// overlayClusters is the length in clusters of a fresh overlay with l1Size
// L2 tables (header, refcount table and block, L1 table, L2 tables). A
// 1 TiB disk (MaxDiskBytes) needs 2048 L2 tables, well within the 32768
// clusters one refcount block counts.
func overlayClusters(l1Size int64) int64 { return 4 + l1Size }

// l2Table is the offset of a fresh overlay's L2 table for L1 entry i.
func l2Table(i int64) int64 { return (4 + i) * qcowCluster }

// OverlayInfo is what a qcow2 layer's header says.
type OverlayInfo struct {
	Size       int64  // virtual size
	Backing    string // backing file name (relative to the layer's directory)
	BackingFmt string
}

// ReadOverlay parses and checks a qcow2 layer's header: magic, version,
// cluster size, no encryption, no internal snapshots, no unknown
// incompatible features, tables inside the file, a bounded backing name.
// Nothing else in the file is read, so the check costs the same for any
// layer (it is the structure check of an O(1) snapshot: the data is
// QEMU's to keep consistent).
func ReadOverlay(path string) (OverlayInfo, error) {
	var info OverlayInfo
	f, err := os.Open(path)
	if err != nil {
		return info, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return info, err
	}
	h := make([]byte, 4096)
	if _, err := io.ReadFull(f, h); err != nil {
		return info, fmt.Errorf("layer %s: short header: %w", path, err)
	}
	be := binary.BigEndian
	bad := func(why string) (OverlayInfo, error) {
		return OverlayInfo{}, errors.New("layer " + path + ": " + why)
	}
	if be.Uint32(h[0:]) != qcowMagic || be.Uint32(h[4:]) != 3 {
		return bad("not a qcow2 version 3 image")
	}
	if be.Uint32(h[20:]) != qcowClusterBits || be.Uint32(h[32:]) != 0 || be.Uint32(h[60:]) != 0 {
		return bad("unexpected cluster size, encryption or internal snapshots")
	}
	// Bit 0 is the dirty bit (set while QEMU has it open with lazy
	// refcounts, which pyro never asks for); 1 is "corrupt".
	if be.Uint64(h[72:])&^1 != 0 {
		return bad("marked corrupt or uses unknown features")
	}
	size := int64(be.Uint64(h[24:]))
	l1 := int64(be.Uint64(h[40:]))
	rt := int64(be.Uint64(h[48:]))
	if size <= 0 || l1 <= 0 || rt <= 0 || l1+int64(be.Uint32(h[36:]))*8 > fi.Size() || rt >= fi.Size() {
		return bad("tables outside the file")
	}
	hlen := int(be.Uint32(h[100:]))
	if hlen < 104 || hlen > 1024 {
		return bad("bad header length")
	}
	for off := hlen; off+8 <= len(h); {
		typ, n := be.Uint32(h[off:]), int(be.Uint32(h[off+4:]))
		if typ == 0 {
			break
		}
		if n > len(h)-off-8 {
			return bad("bad header extension")
		}
		if typ == qcowExtBackFmt {
			info.BackingFmt = string(h[off+8 : off+8+n])
		}
		off += 8 + (n+7)/8*8
	}
	boff, blen := int64(be.Uint64(h[8:])), int64(be.Uint32(h[16:]))
	if blen > 0 {
		if blen > maxBackingName || boff <= 0 || boff+blen > fi.Size() {
			return bad("bad backing file name")
		}
		name := make([]byte, blen)
		if _, err := f.ReadAt(name, boff); err != nil {
			return bad("unreadable backing file name")
		}
		info.Backing = string(name)
	}
	info.Size = size
	return info, nil
}
