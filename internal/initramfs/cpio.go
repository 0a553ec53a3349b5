package initramfs

import (
	"fmt"
	"io"
)

// newc cpio mode bits.
const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChar = 0o020000
)

// cpioWriter writes the "newc" (070701) cpio format the kernel unpacks.
type cpioWriter struct {
	w     io.Writer
	n     int64
	ino   uint32
	trail bool
}

type cpioHeader struct {
	name         string
	mode         uint32 // type and permission bits
	size         int64
	rmajor, rmin uint32
	nlink        uint32
}

func (c *cpioWriter) write(p []byte) error {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

// writeHeader writes an entry header and its name; the caller then writes
// exactly h.size bytes of data and calls endData.
func (c *cpioWriter) writeHeader(h cpioHeader) error {
	if h.size > 0xffffffff {
		return fmt.Errorf("cpio entry %q too large (%d bytes)", h.name, h.size)
	}
	c.ino++
	nlink := h.nlink
	if nlink == 0 {
		nlink = 1
		if h.mode&0o170000 == modeDir {
			nlink = 2
		}
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, h.mode, 0, 0, nlink, 0, uint32(h.size), 0, 0, h.rmajor, h.rmin, len(h.name)+1, 0)
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(h.name), 0)); err != nil {
		return err
	}
	return c.pad()
}

// count wraps the data writes so padding stays right.
func (c *cpioWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *cpioWriter) endData() error { return c.pad() }

func (c *cpioWriter) dir(name string, perm uint32) error {
	return c.writeHeader(cpioHeader{name: name, mode: modeDir | perm})
}

func (c *cpioWriter) file(name string, perm uint32, data []byte) error {
	if err := c.writeHeader(cpioHeader{name: name, mode: modeFile | perm, size: int64(len(data))}); err != nil {
		return err
	}
	if err := c.write(data); err != nil {
		return err
	}
	return c.endData()
}

func (c *cpioWriter) fileFrom(name string, perm uint32, size int64, r io.Reader) error {
	if err := c.writeHeader(cpioHeader{name: name, mode: modeFile | perm, size: size}); err != nil {
		return err
	}
	n, err := io.Copy(c, io.LimitReader(r, size))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("cpio entry %q: got %d bytes, want %d", name, n, size)
	}
	return c.endData()
}

func (c *cpioWriter) charDev(name string, perm, major, minor uint32) error {
	return c.writeHeader(cpioHeader{name: name, mode: modeChar | perm, rmajor: major, rmin: minor})
}

// close writes the trailer. The kernel needs no block padding.
func (c *cpioWriter) close() error {
	if c.trail {
		return nil
	}
	c.trail = true
	c.ino = 0
	return c.writeHeader(cpioHeader{name: "TRAILER!!!", nlink: 1})
}
