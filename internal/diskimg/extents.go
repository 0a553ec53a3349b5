package diskimg

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
)

// Reading file content by extents: debugfs prints a file's extent map with
// its stat, and the blocks are then read straight from the image file at
// host speed (large preads), instead of through `debugfs cat`, which moves
// the content through a pipe a block at a time. The map is the image's (so
// the guest's): it can only point into the same image, every read is
// bounds-checked against it, and exactly the listed size is produced
// (holes and unwritten extents read as zeros), so a crafted map garbles at
// most the guest's own file.

// Extent maps Len blocks from logical block Logical to physical block
// Physical; Unwritten extents read as zeros.
type Extent struct {
	Logical, Physical, Len uint64
	Unwritten              bool
}

var extentTok = regexp.MustCompile(`^\((\d+)(?:-(\d+))?(\[u\])?\):(\d+)(?:-(\d+))?$`)
var nodeTok = regexp.MustCompile(`^\(ETB\d+\):\d+$`)

// parseExtents reads the EXTENTS: part of a stat section (nil, false when
// there is none or it does not parse: the caller reads the file with Cat).
func parseExtents(s []byte) ([]Extent, bool) {
	i := bytes.Index(s, []byte("\nEXTENTS:\n"))
	if i < 0 {
		return nil, false
	}
	var out []Extent
	for _, line := range bytes.Split(s[i+len("\nEXTENTS:\n"):], []byte("\n")) {
		for _, tok := range bytes.Split(line, []byte(", ")) {
			tok = bytes.TrimSpace(tok)
			if len(tok) == 0 || nodeTok.Match(tok) {
				continue
			}
			m := extentTok.FindSubmatch(tok)
			if m == nil {
				return nil, false
			}
			l0, _ := strconv.ParseUint(string(m[1]), 10, 64)
			l1, p0 := l0, uint64(0)
			if len(m[2]) > 0 {
				l1, _ = strconv.ParseUint(string(m[2]), 10, 64)
			}
			p0, _ = strconv.ParseUint(string(m[4]), 10, 64)
			p1 := p0
			if len(m[5]) > 0 {
				p1, _ = strconv.ParseUint(string(m[5]), 10, 64)
			}
			if l1 < l0 || p1 < p0 || l1-l0 != p1-p0 || l1 >= 1<<32 || p1 >= 1<<48 {
				return nil, false
			}
			out = append(out, Extent{Logical: l0, Physical: p0, Len: l1 - l0 + 1, Unwritten: len(m[3]) > 0})
		}
	}
	return out, true
}

// BlockSize returns the image's block size.
func (im Image) BlockSize(ctx context.Context) (int64, error) {
	out, _, _, err := im.run(ctx, "stats", 1<<20)
	if err != nil {
		return 0, err
	}
	i := bytes.Index(out, []byte("\nBlock size:"))
	if i < 0 {
		return 0, fmt.Errorf("debugfs stats: no block size")
	}
	f := bytes.Fields(out[i+len("\nBlock size:"):])
	if len(f) == 0 {
		return 0, fmt.Errorf("debugfs stats: no block size")
	}
	bs, err := strconv.ParseInt(string(f[0]), 10, 64)
	if err != nil || bs < 1024 || bs > 65536 || bs&(bs-1) != 0 {
		return 0, fmt.Errorf("debugfs stats: block size %q", f[0])
	}
	return bs, nil
}

// ReadExtents writes exactly size bytes of a file mapped by ext to w,
// reading its blocks from img (the image file, block size bs).
func ReadExtents(img *os.File, bs int64, ext []Extent, size int64, w io.Writer, buf []byte) error {
	ext = append([]Extent(nil), ext...)
	sort.Slice(ext, func(i, j int) bool { return ext[i].Logical < ext[j].Logical })
	var pos int64
	zeros := func(n int64) error {
		clear(buf)
		for n > 0 {
			m := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:m]); err != nil {
				return err
			}
			n -= m
		}
		return nil
	}
	for _, e := range ext {
		start, end := int64(e.Logical)*bs, int64(e.Logical+e.Len)*bs
		phys := int64(e.Physical) * bs
		if end <= pos || start >= size {
			continue // overlapped by an earlier extent, or past the end
		}
		if start < pos { // overlap: the earlier extent wins
			phys += pos - start
			start = pos
		}
		end = min(end, size)
		if err := zeros(start - pos); err != nil {
			return err
		}
		if e.Unwritten {
			if err := zeros(end - start); err != nil {
				return err
			}
		} else {
			for off := start; off < end; {
				m := min(end-off, int64(len(buf)))
				n, err := img.ReadAt(buf[:m], phys+(off-start))
				if int64(n) < m {
					return fmt.Errorf("the image's extent map points past its end: %v", err)
				}
				if _, err := w.Write(buf[:m]); err != nil {
					return err
				}
				off += m
			}
		}
		pos = end
	}
	return zeros(size - pos)
}
