package vm

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// forkStream is a QEMU 7.2 migration stream of a guest with 4 pages of
// RAM, page 2 holding 0xab, then device state.
func forkStream() []byte {
	var b bytes.Buffer
	be32 := func(v uint32) { binary.Write(&b, binary.BigEndian, v) }
	be64 := func(v uint64) { binary.Write(&b, binary.BigEndian, v) }
	name := func(s string) { b.WriteByte(byte(len(s))); b.WriteString(s) }
	be32(0x5145564d)
	be32(3)
	b.WriteByte(0x07) // configuration
	be32(7)
	b.WriteString("microvm")
	b.WriteByte(0x01) // ram setup
	be32(2)
	name("ram")
	be32(0)
	be32(4)
	be64(4*4096 | 0x04)
	name("microvm.ram")
	be64(4 * 4096)
	be64(0x10)
	b.WriteByte(0x7e)
	be32(2)
	b.WriteByte(0x03) // ram end
	be32(2)
	be64(2*4096 | 0x08)
	name("microvm.ram")
	b.Write(bytes.Repeat([]byte{0xab}, 4096))
	be64(0x10)
	b.WriteByte(0x7e)
	be32(2)
	b.WriteByte(0x04) // device state
	b.WriteString("devices")
	b.WriteByte(0x00)
	return b.Bytes()
}

// The forks' RAM file holds the saved RAM, can be mapped copy-on-write
// (what a fork's QEMU does with it), and cannot be written, grown, shrunk
// or mapped shared-writable, by anyone: a fork's QEMU, which opens it
// read-write, cannot change what its siblings map. Another process of the
// same user opens it through Path.
func TestForkRAMSealed(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(state, forkStream(), 0o600); err != nil {
		t.Fatal(err)
	}
	ram, err := SplitForkRAM(state, 4*4096)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	dev, err := os.ReadFile(ram.State)
	if err != nil || bytes.Contains(dev, []byte{0xab, 0xab, 0xab, 0xab}) || !bytes.HasSuffix(dev, []byte("devices\x00")) {
		t.Fatalf("device state %q, %v", dev, err)
	}
	f, err := os.OpenFile(ram.Path(), os.O_RDWR, 0) // as QEMU does
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{1}, 0); err == nil {
		t.Error("ram file written")
	}
	if err := f.Truncate(8 * 4096); err == nil {
		t.Error("ram file grown")
	}
	if m, err := unix.Mmap(int(f.Fd()), 0, 4*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		unix.Munmap(m)
		t.Error("ram file mapped shared and writable")
	}
	m, err := unix.Mmap(int(f.Fd()), 0, 4*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	if m[2*4096] != 0xab || m[3*4096-1] != 0xab || m[0] != 0 || m[3*4096] != 0 {
		t.Fatal("ram file does not hold the saved RAM")
	}
	m[2*4096] = 1 // copy-on-write: the file keeps its byte
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 2*4096); err != nil || b[0] != 0xab {
		t.Errorf("a private write reached the file: %x %v", b, err)
	}
	// A guest of another size is refused, and nothing is left.
	os.Remove(ram.State)
	if _, err := SplitForkRAM(state, 8*4096); err == nil {
		t.Error("a state of another RAM size was split")
	}
	if _, err := os.Stat(state + ".dev"); !os.IsNotExist(err) {
		t.Errorf("left %s.dev: %v", state, err)
	}
}
