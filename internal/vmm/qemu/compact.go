package qemu

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pyro-mcp/pyro/internal/vmm"
)

// CompactState copies a saved migration stream (Save's state file) from
// in to out without the records of guest RAM pages that are all zeros.
//
// Why: QEMU 7.2 loads a zero-page record by first reading the destination
// page (buffer_is_zero) and writing it only when it is not zero. A
// restored guest's RAM is fresh anonymous memory, so every such read
// faults in the host's zero page: a 1 GiB guest with ~100 MiB in use
// sends ~230k zero-page records, and their faults were most of a
// restore's CPU without transparent huge pages (0.48 s against 0.21 s
// with them, vmm.Spec.HugePages). Without the records those pages are
// never touched; they read as zeros in the guest all the same, because
// only main-RAM blocks are compacted (ramBlock), whose memory QEMU
// allocates zeroed before a restore and writes nothing into (ROM blocks,
// which QEMU fills at start, keep every record). A page the stream wrote
// earlier (the guest ran while it was saved, so a page may be sent again
// after it changed) keeps its zero record: it must be cleared.
//
// The stream is parsed only as far as QEMU 7.2 lays out the RAM section
// of a precopy migration (savevm.c, ram.c: the "ram" section's setup,
// parts and end, each page record an address with flags, an optional
// block name, then one fill byte or a page); the device sections after it
// are copied as they are. Anything else (another iterable section,
// compressed or XBZRLE pages, an unknown flag or section) is an error,
// and the caller keeps the stream unchanged: a restore from it is only
// slower, never different.
func CompactState(in io.Reader, out io.Writer) (CompactStats, error) {
	c := compactor{r: bufio.NewReaderSize(in, 1<<20), w: bufio.NewWriterSize(out, 1<<20)}
	if err := c.run(); err != nil {
		return c.stats, err
	}
	return c.stats, c.w.Flush()
}

// CompactStats counts what CompactState kept and dropped.
type CompactStats struct {
	Pages       int // page records kept (their 4 KiB copied)
	ZeroDropped int // zero-page records dropped
	ZeroKept    int // fill-byte records kept (ROM blocks, non-zero fill)
	Sections    int // RAM sections parsed
	RAMPages    int // pages SplitRAM wrote to the RAM file
	DeviceBytes int64
	RAMBlockIDs []string
}

// Parts of QEMU's migration stream (migration/savevm.c, migration/ram.c
// in QEMU 7.2).
const (
	vmFileMagic   = 0x5145564d // "QEVM"
	vmFileVersion = 3

	secEOF       = 0x00
	secStart     = 0x01
	secPart      = 0x02
	secEnd       = 0x03
	secFull      = 0x04
	secSubsect   = 0x05
	secConfig    = 0x07
	secFooter    = 0x7e
	ramFlagZero  = 0x02
	ramFlagSize  = 0x04
	ramFlagPage  = 0x08
	ramFlagEOS   = 0x10
	ramFlagCont  = 0x20
	ramFlagsMask = 0xfff // flags live below the target page size
	pageSize     = 4096  // x86 TARGET_PAGE_SIZE
)

type compactor struct {
	r     *bufio.Reader
	w     *bufio.Writer
	stats CompactStats
	// blocks: the RAM blocks the setup announced, and their lengths.
	blocks map[string]uint64
	// written marks, per block, the pages an earlier record of the
	// output filled.
	written map[string][]uint64
	ramID   uint32
	// inBlock is the block the input's last record named; outBlock the
	// one the output's last written record named ("" at a section start,
	// so the first record written in each section names its block).
	inBlock, outBlock string
	// ram, when set, takes main guest RAM out of the stream (SplitRAM):
	// it returns the memory the block's pages are written into instead.
	ram      func(name string, n uint64) ([]byte, error)
	ramBlock string
	ramMem   []byte
}

var errNotCompactable = errors.New("not a stream this compactor knows")

func (c *compactor) run() error {
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(c.r, hdr); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(hdr) != vmFileMagic || binary.BigEndian.Uint32(hdr[4:]) != vmFileVersion {
		return fmt.Errorf("%w: header %x", errNotCompactable, hdr)
	}
	c.w.Write(hdr)
	for {
		t, err := c.r.ReadByte()
		if err != nil {
			return err
		}
		switch t {
		case secConfig:
			c.w.WriteByte(t)
			name, err := c.copyBytes32()
			if err != nil {
				return err
			}
			if next, err := c.r.Peek(1); err != nil || next[0] == secSubsect {
				return fmt.Errorf("%w: configuration %q with subsections", errNotCompactable, name)
			}
		case secStart:
			if err := c.setup(); err != nil {
				return err
			}
		case secPart, secEnd:
			if c.blocks == nil {
				return fmt.Errorf("%w: ram part before its setup", errNotCompactable)
			}
			if err := c.pages(t); err != nil {
				return err
			}
		case secFull, secEOF:
			if c.blocks == nil {
				return fmt.Errorf("%w: no ram section", errNotCompactable)
			}
			// Device state from here on: copied as it is.
			c.w.WriteByte(t)
			n, err := io.Copy(c.w, c.r)
			c.stats.DeviceBytes = n + 1
			return err
		default:
			return fmt.Errorf("%w: section type %#x", errNotCompactable, t)
		}
	}
}

// setup copies the "ram" section's start: the total size, then each
// block's name and length, then its end of section and footer.
func (c *compactor) setup() error {
	var b [8]byte
	if _, err := io.ReadFull(c.r, b[:4]); err != nil {
		return err
	}
	id := binary.BigEndian.Uint32(b[:4])
	name, err := c.readName()
	if err != nil {
		return err
	}
	if name != "ram" || c.blocks != nil {
		return fmt.Errorf("%w: iterable section %q", errNotCompactable, name)
	}
	c.ramID = id
	c.w.WriteByte(secStart)
	c.w.Write(b[:4])
	c.writeName(name)
	if _, err := io.CopyN(c.w, c.r, 8); err != nil { // instance and version
		return err
	}
	total, err := c.be64()
	if err != nil {
		return err
	}
	if total&ramFlagsMask != ramFlagSize {
		return fmt.Errorf("%w: ram setup flags %#x", errNotCompactable, total&ramFlagsMask)
	}
	c.putBE64(total)
	total &^= ramFlagsMask
	c.blocks, c.written = map[string]uint64{}, map[string][]uint64{}
	var sum uint64
	for sum < total {
		bn, err := c.readName()
		if err != nil {
			return err
		}
		n, err := c.be64()
		if err != nil {
			return err
		}
		if _, dup := c.blocks[bn]; dup || n == 0 || n%pageSize != 0 {
			return fmt.Errorf("%w: ram block %q of %d bytes", errNotCompactable, bn, n)
		}
		c.blocks[bn] = n
		c.written[bn] = make([]uint64, (n/pageSize+63)/64)
		if c.ram != nil && ramBlock(bn) {
			if c.ramMem != nil {
				return fmt.Errorf("%w: two main ram blocks (%q, %q)", errNotCompactable, c.ramBlock, bn)
			}
			if c.ramMem, err = c.ram(bn, n); err != nil {
				return err
			}
			if uint64(len(c.ramMem)) != n {
				return fmt.Errorf("ram block %q: %d bytes of memory for %d", bn, len(c.ramMem), n)
			}
			c.ramBlock = bn
		}
		c.stats.RAMBlockIDs = append(c.stats.RAMBlockIDs, bn)
		sum += n
		c.writeName(bn)
		c.putBE64(n)
	}
	// Blocks carrying more than name and length (postcopy page sizes,
	// x-ignore-shared addresses) would not add up.
	if sum != total {
		return fmt.Errorf("%w: ram blocks add up to %d, not %d", errNotCompactable, sum, total)
	}
	eos, err := c.be64()
	if err != nil {
		return err
	}
	if eos != ramFlagEOS {
		return fmt.Errorf("%w: ram setup ends with %#x", errNotCompactable, eos)
	}
	c.putBE64(eos)
	c.stats.Sections++
	return c.footer()
}

// pages copies one part or end of the "ram" section, dropping the
// zero-page records of main-RAM blocks.
func (c *compactor) pages(t byte) error {
	var b [4]byte
	if _, err := io.ReadFull(c.r, b[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(b[:]) != c.ramID {
		return fmt.Errorf("%w: section %d is not ram's", errNotCompactable, binary.BigEndian.Uint32(b[:]))
	}
	c.w.WriteByte(t)
	c.w.Write(b[:])
	c.outBlock = ""
	page := make([]byte, pageSize)
	for {
		h, err := c.be64()
		if err != nil {
			return err
		}
		flags, addr := h&ramFlagsMask, h&^uint64(ramFlagsMask)
		if flags == ramFlagEOS {
			c.putBE64(h)
			c.stats.Sections++
			return c.footer()
		}
		if flags&^ramFlagCont != ramFlagZero && flags&^ramFlagCont != ramFlagPage {
			return fmt.Errorf("%w: page flags %#x", errNotCompactable, flags)
		}
		if flags&ramFlagCont == 0 {
			if c.inBlock, err = c.readName(); err != nil {
				return err
			}
		}
		n, ok := c.blocks[c.inBlock]
		if !ok || addr >= n {
			return fmt.Errorf("%w: page %#x of block %q", errNotCompactable, addr, c.inBlock)
		}
		if c.ramMem != nil && c.inBlock == c.ramBlock {
			// SplitRAM: the page goes to the RAM file, not the stream.
			p := c.ramMem[addr&^(pageSize-1):][:pageSize]
			if flags&ramFlagZero != 0 {
				fill, err := c.r.ReadByte()
				if err != nil {
					return err
				}
				if fill != 0 || c.wasWritten(addr) {
					for i := range p {
						p[i] = fill
					}
				}
				c.stats.ZeroDropped++
			} else {
				if _, err := io.ReadFull(c.r, p); err != nil {
					return err
				}
				c.stats.RAMPages++
			}
			c.markWritten(addr)
			continue
		}
		if flags&ramFlagZero != 0 {
			fill, err := c.r.ReadByte()
			if err != nil {
				return err
			}
			if fill == 0 && ramBlock(c.inBlock) && !c.wasWritten(addr) {
				c.stats.ZeroDropped++
				continue
			}
			c.stats.ZeroKept++
			c.record(addr, ramFlagZero)
			c.markWritten(addr)
			c.w.WriteByte(fill)
			continue
		}
		if _, err := io.ReadFull(c.r, page); err != nil {
			return err
		}
		c.stats.Pages++
		c.record(addr, ramFlagPage)
		c.markWritten(addr)
		c.w.Write(page)
	}
}

func (c *compactor) wasWritten(addr uint64) bool {
	i := addr / pageSize
	return c.written[c.inBlock][i/64]&(1<<(i%64)) != 0
}

func (c *compactor) markWritten(addr uint64) {
	i := addr / pageSize
	c.written[c.inBlock][i/64] |= 1 << (i % 64)
}

// record writes a page record's header, naming its block unless the
// output's previous record named the same one.
func (c *compactor) record(addr, flags uint64) {
	if c.outBlock == c.inBlock {
		c.putBE64(addr | flags | ramFlagCont)
		return
	}
	c.putBE64(addr | flags)
	c.writeName(c.inBlock)
	c.outBlock = c.inBlock
}

// ramBlock says whether a block is main guest RAM, which a restoring QEMU
// holds zeroed: "<machine>.ram" (microvm.ram, pc.ram). ROM blocks
// ("/rom@...", "pc.bios") are filled by QEMU at start.
func ramBlock(name string) bool {
	return strings.HasSuffix(name, ".ram") && !strings.HasPrefix(name, "/")
}

func (c *compactor) footer() error {
	var b [5]byte
	if _, err := io.ReadFull(c.r, b[:]); err != nil {
		return err
	}
	if b[0] != secFooter || binary.BigEndian.Uint32(b[1:]) != c.ramID {
		return fmt.Errorf("%w: section footer %x", errNotCompactable, b)
	}
	c.w.Write(b[:])
	return nil
}

func (c *compactor) readName() (string, error) {
	n, err := c.r.ReadByte()
	if err != nil {
		return "", err
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

func (c *compactor) writeName(s string) {
	c.w.WriteByte(byte(len(s)))
	c.w.WriteString(s)
}

// copyBytes32 copies a be32 length and that many bytes.
func (c *compactor) copyBytes32() (string, error) {
	var b [4]byte
	if _, err := io.ReadFull(c.r, b[:]); err != nil {
		return "", err
	}
	n := binary.BigEndian.Uint32(b[:])
	if n > 256 {
		return "", fmt.Errorf("%w: name of %d bytes", errNotCompactable, n)
	}
	s := make([]byte, n)
	if _, err := io.ReadFull(c.r, s); err != nil {
		return "", err
	}
	c.w.Write(b[:])
	c.w.Write(s)
	return string(s), nil
}

func (c *compactor) be64() (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(c.r, b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b[:]), nil
}

func (c *compactor) putBE64(v uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	c.w.Write(b[:])
}

var _ vmm.StateCompactor = (*Backend)(nil)

// CompactState implements vmm.StateCompactor.
func (b *Backend) CompactState(in io.Reader, out io.Writer) error {
	_, err := CompactState(in, out)
	return err
}
