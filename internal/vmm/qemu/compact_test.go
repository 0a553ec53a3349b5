package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
)

// stream builds a migration stream in QEMU 7.2's layout for the tests.
type stream struct{ bytes.Buffer }

func (s *stream) be32(v uint32) { binary.Write(&s.Buffer, binary.BigEndian, v) }
func (s *stream) be64(v uint64) { binary.Write(&s.Buffer, binary.BigEndian, v) }
func (s *stream) name(n string) { s.WriteByte(byte(len(n))); s.WriteString(n) }

// rec writes one page record: block "" continues the previous block.
func (s *stream) rec(block string, addr, flags uint64, payload []byte) {
	if block == "" {
		s.be64(addr | flags | ramFlagCont)
	} else {
		s.be64(addr | flags)
		s.name(block)
	}
	s.Write(payload)
}

func page(b byte) []byte { return bytes.Repeat([]byte{b}, pageSize) }

const testRAM, testROM = 8 * pageSize, 2 * pageSize

// savedStream is a stream of an 8-page guest RAM and a 2-page ROM, with
// what a running guest's save produces: pages sent, zero pages, a page
// sent again as zero after it was written, a ROM zero page, then device
// state.
func savedStream() []byte {
	var s stream
	s.be32(vmFileMagic)
	s.be32(vmFileVersion)
	s.WriteByte(secConfig)
	s.be32(7)
	s.WriteString("microvm")
	s.WriteByte(secStart)
	s.be32(2)
	s.name("ram")
	s.be32(0)
	s.be32(4)
	s.be64((testRAM + testROM) | ramFlagSize)
	s.name("microvm.ram")
	s.be64(testRAM)
	s.name("/rom@etc/acpi/tables")
	s.be64(testROM)
	s.be64(ramFlagEOS)
	s.WriteByte(secFooter)
	s.be32(2)
	// First pass: page 0 written, pages 1-3 zero (the first of them
	// names the block), page 4 written, ROM page 0 zero, ROM page 1
	// written, back to RAM with zero pages 5-7.
	s.WriteByte(secPart)
	s.be32(2)
	s.rec("microvm.ram", 1*pageSize, ramFlagZero, []byte{0})
	s.rec("", 0, ramFlagPage, page(0xaa))
	s.rec("", 2*pageSize, ramFlagZero, []byte{0})
	s.rec("", 3*pageSize, ramFlagZero, []byte{0})
	s.rec("", 4*pageSize, ramFlagPage, page(0xbb))
	s.rec("/rom@etc/acpi/tables", 0, ramFlagZero, []byte{0})
	s.rec("", pageSize, ramFlagPage, page(0xcc))
	s.rec("microvm.ram", 5*pageSize, ramFlagZero, []byte{0})
	s.rec("", 6*pageSize, ramFlagZero, []byte{0x11}) // a fill byte other than zero
	s.rec("", 7*pageSize, ramFlagZero, []byte{0})
	s.be64(ramFlagEOS)
	s.WriteByte(secFooter)
	s.be32(2)
	// The last pass, guest stopped: page 0 was cleared, page 3 written.
	s.WriteByte(secEnd)
	s.be32(2)
	s.rec("microvm.ram", 0, ramFlagZero, []byte{0})
	s.rec("", 3*pageSize, ramFlagPage, page(0xdd))
	s.be64(ramFlagEOS)
	s.WriteByte(secFooter)
	s.be32(2)
	// Device state, opaque to the compactor.
	s.WriteByte(secFull)
	s.Write([]byte("\x00\x00\x00\x03\x04cpus\x00\x00\x00\x00\x00\x00\x00\x01device-bytes"))
	s.WriteByte(secEOF)
	return s.Bytes()
}

// load applies a stream's RAM records the way QEMU 7.2 loads them into
// a machine whose RAM is zero and whose ROM holds what QEMU put there at
// start, and returns both memories and the device bytes after the RAM.
func load(t *testing.T, b []byte) (ram, rom []byte, tail []byte) {
	t.Helper()
	ram, rom = make([]byte, testRAM), bytes.Repeat([]byte{0x5a}, testROM)
	mem := map[string][]byte{"microvm.ram": ram, "/rom@etc/acpi/tables": rom}
	r := bytes.NewReader(b)
	get := func(n int) []byte {
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			t.Fatalf("short stream: %v", err)
		}
		return p
	}
	be64 := func() uint64 { return binary.BigEndian.Uint64(get(8)) }
	name := func() string { return string(get(int(get(1)[0]))) }
	get(8)
	get(1)
	get(int(binary.BigEndian.Uint32(get(4))))
	var block string
	for {
		switch t0 := get(1)[0]; t0 {
		case secStart:
			get(4)
			name()
			get(8)
			total := be64() &^ ramFlagsMask
			for sum := uint64(0); sum < total; {
				name()
				sum += be64()
			}
			be64()
			get(5)
		case secPart, secEnd:
			get(4)
			for {
				h := be64()
				flags, addr := h&ramFlagsMask, h&^uint64(ramFlagsMask)
				if flags == ramFlagEOS {
					break
				}
				if flags&ramFlagCont == 0 {
					block = name()
				}
				dst := mem[block][addr : addr+pageSize]
				if flags&ramFlagZero != 0 {
					fill := get(1)[0]
					if fill != 0 || !bytes.Equal(dst, page(0)) { // ram_handle_compressed
						copy(dst, page(fill))
					}
					continue
				}
				copy(dst, get(pageSize))
			}
			get(5)
		default:
			rest, _ := io.ReadAll(r)
			return ram, rom, append([]byte{t0}, rest...)
		}
	}
}

// TestCompactStateDropsZeroPages: the compacted stream loads into the
// same memory and device state as the saved one, without the zero-page
// records of guest RAM that are not needed to clear an earlier write.
func TestCompactStateDropsZeroPages(t *testing.T) {
	in := savedStream()
	var out bytes.Buffer
	st, err := CompactState(bytes.NewReader(in), &out)
	if err != nil {
		t.Fatal(err)
	}
	// Dropped: RAM pages 1, 2, 3, 5, 7 (not written before). Kept: page 0's
	// zero after its write, the 0x11 fill, the ROM zero page.
	if st.ZeroDropped != 5 || st.ZeroKept != 3 || st.Pages != 4 || st.Sections != 3 {
		t.Fatalf("stats %+v", st)
	}
	if out.Len() >= len(in) {
		t.Fatalf("compacted stream of %d bytes, saved %d", out.Len(), len(in))
	}
	ram0, rom0, tail0 := load(t, in)
	ram1, rom1, tail1 := load(t, out.Bytes())
	if !bytes.Equal(ram0, ram1) || !bytes.Equal(rom0, rom1) || !bytes.Equal(tail0, tail1) {
		t.Fatal("the compacted stream loads into other memory or device state than the saved one")
	}
	if ram1[6*pageSize] != 0x11 || ram1[0] != 0 || ram1[3*pageSize] != 0xdd || rom1[0] != 0 {
		t.Fatalf("loaded memory is not the guest's: %x %x %x %x", ram1[6*pageSize], ram1[0], ram1[3*pageSize], rom1[0])
	}
	// Compacting again changes nothing.
	var again bytes.Buffer
	if _, err := CompactState(bytes.NewReader(out.Bytes()), &again); err != nil || !bytes.Equal(again.Bytes(), out.Bytes()) {
		t.Fatalf("second compaction: %v, same %t", err, bytes.Equal(again.Bytes(), out.Bytes()))
	}
}

// TestCompactStateRefusesUnknownStreams: whatever the compactor does not
// know is an error (the caller keeps the saved stream), never a guess.
func TestCompactStateRefusesUnknownStreams(t *testing.T) {
	base := savedStream()
	// Offsets into savedStream: the ram setup's total size follows the
	// header (8), configuration (1+4+7), section start (1+4+1+3+4+4).
	setupAt := 8 + 12 + 17
	partAt := bytes.Index(base, []byte{secPart, 0, 0, 0, 2})
	for _, tc := range []struct {
		name string
		edit func(b []byte) []byte
	}{
		{"bad magic", func(b []byte) []byte { b[0] = 'X'; return b }},
		{"xbzrle page", func(b []byte) []byte { b[partAt+5+7] |= 0x40; return b }},
		{"other iterable section", func(b []byte) []byte { copy(b[8+12+6:], "blk"); return b }},
		{"blocks not adding up", func(b []byte) []byte { b[setupAt+5]++; return b }},
		{"configuration subsection", func(b []byte) []byte {
			return append(append(append([]byte{}, b[:20]...), secSubsect), b[20:]...)
		}},
		{"truncated", func(b []byte) []byte { return b[:partAt+100] }},
		{"no ram", func(b []byte) []byte { return append(append([]byte{}, b[:20]...), secEOF) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.edit(append([]byte{}, base...))
			_, err := CompactState(bytes.NewReader(in), io.Discard)
			if err == nil {
				t.Fatal("compacted a stream it does not know")
			}
			if !errors.Is(err, errNotCompactable) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				t.Fatalf("error %v", fmt.Sprint(err))
			}
		})
	}
}
