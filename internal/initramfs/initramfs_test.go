package initramfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

type entry struct {
	name         string
	mode         uint32
	data         []byte
	rmajor, rmin uint32
}

// parseNewc is an independent reader for the newc format.
func parseNewc(t *testing.T, b []byte) []entry {
	t.Helper()
	var out []entry
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) {
			t.Fatalf("truncated header at %d", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(v)
		}
		mode, size, rmaj, rmin, namesize := field(1), field(6), field(9), field(10), field(11)
		nameStart := off + 110
		name := string(b[nameStart : nameStart+int(namesize)-1])
		if b[nameStart+int(namesize)-1] != 0 {
			t.Fatalf("name %q not NUL-terminated", name)
		}
		dataStart := align(nameStart + int(namesize))
		if name == "TRAILER!!!" {
			return out
		}
		out = append(out, entry{name: name, mode: mode, data: b[dataStart : dataStart+int(size)], rmajor: rmaj, rmin: rmin})
		off = align(dataStart + int(size))
	}
}

func writeFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestBuildRoundTrip(t *testing.T) {
	dir := t.TempDir()
	bin := writeFile(t, filepath.Join(dir, "pyro"), []byte("fake agent binary\x00\x01"))
	m1 := writeFile(t, filepath.Join(dir, "virtio.ko"), []byte("module one"))
	m2 := writeFile(t, filepath.Join(dir, "virtio_ring.ko"), []byte("module two!"))
	cache := filepath.Join(dir, "cache")

	out, err := Build(cache, bin, []string{m2, m1})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(out) != filepath.Join(cache, "initramfs") || !strings.HasSuffix(out, ".cpio") {
		t.Fatalf("unexpected path %s", out)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]entry{}
	for _, e := range parseNewc(t, b) {
		got[e.name] = e
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "run"} {
		if e, ok := got[d]; !ok || e.mode != 0o040755 {
			t.Errorf("dir %s: %+v", d, e)
		}
	}
	if e := got["init"]; e.mode != 0o100755 || string(e.data) != "fake agent binary\x00\x01" {
		t.Errorf("init: %+v", e)
	}
	if e := got["dev/console"]; e.mode != 0o020600 || e.rmajor != 5 || e.rmin != 1 {
		t.Errorf("console: %+v", e)
	}
	if e := got["pyro/modules/virtio.ko"]; string(e.data) != "module one" {
		t.Errorf("module: %+v", e)
	}
	if e := got["pyro/modules.order"]; string(e.data) != "virtio_ring.ko\nvirtio.ko\n" {
		t.Errorf("order: %q", e.data)
	}

	// GNU cpio agrees, when installed.
	if _, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command("cpio", "-t", "--quiet")
		cmd.Stdin = bytes.NewReader(b)
		list, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio -t: %v", err)
		}
		if !strings.Contains(string(list), "pyro/modules/virtio_ring.ko\n") || !strings.Contains(string(list), "init\n") {
			t.Errorf("cpio -t listed:\n%s", list)
		}
	}

	// Same inputs: same file, not rewritten.
	st1, _ := os.Stat(out)
	out2, err := Build(cache, bin, []string{m2, m1})
	if err != nil || out2 != out {
		t.Fatalf("rebuild: %s %v", out2, err)
	}
	st2, _ := os.Stat(out2)
	if !st2.ModTime().Equal(st1.ModTime()) {
		t.Error("cache hit rewrote the archive")
	}
	// Order matters.
	out3, err := Build(cache, bin, []string{m1, m2})
	if err != nil || out3 == out {
		t.Fatalf("order change: %s %v", out3, err)
	}
	// A changed binary (same size, new mtime) is noticed.
	writeFile(t, bin, []byte("fake agent binary\x00\x02"))
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(bin, future, future); err != nil {
		t.Fatal(err)
	}
	out4, err := Build(cache, bin, []string{m2, m1})
	if err != nil || out4 == out {
		t.Fatalf("binary change: %s %v", out4, err)
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(filepath.Join(cache, "initramfs"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp") || strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	bin := writeFile(t, filepath.Join(dir, "pyro"), []byte("x"))
	m := writeFile(t, filepath.Join(dir, "a.ko"), []byte("m"))
	if _, err := Build(dir, filepath.Join(dir, "missing"), nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing binary: %v", err)
	}
	if _, err := Build(dir, bin, []string{filepath.Join(dir, "missing.ko")}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing module: %v", err)
	}
	if _, err := Build(dir, bin, []string{m, m}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("duplicate module: %v", err)
	}
}

// minimalELF returns a tiny x86-64 ELF executable, with a PT_INTERP header
// when dynamic is set.
func minimalELF(dynamic bool) []byte {
	var buf bytes.Buffer
	le := binary.LittleEndian
	phnum := uint16(1)
	if dynamic {
		phnum = 2
	}
	ident := []byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	buf.Write(ident)
	binary.Write(&buf, le, uint16(2))  // ET_EXEC
	binary.Write(&buf, le, uint16(62)) // EM_X86_64
	binary.Write(&buf, le, uint32(1))  // version
	binary.Write(&buf, le, uint64(0))  // entry
	binary.Write(&buf, le, uint64(64)) // phoff
	binary.Write(&buf, le, uint64(0))  // shoff
	binary.Write(&buf, le, uint32(0))  // flags
	binary.Write(&buf, le, uint16(64)) // ehsize
	binary.Write(&buf, le, uint16(56)) // phentsize
	binary.Write(&buf, le, phnum)      // phnum
	binary.Write(&buf, le, uint16(64)) // shentsize
	binary.Write(&buf, le, uint16(0))  // shnum
	binary.Write(&buf, le, uint16(0))  // shstrndx
	prog := func(typ uint32) {
		binary.Write(&buf, le, typ)
		binary.Write(&buf, le, uint32(5))
		for i := 0; i < 6; i++ {
			binary.Write(&buf, le, uint64(0))
		}
	}
	if dynamic {
		prog(3) // PT_INTERP
	}
	prog(1) // PT_LOAD
	return buf.Bytes()
}

func TestCheckStatic(t *testing.T) {
	dir := t.TempDir()
	static := writeFile(t, filepath.Join(dir, "static"), minimalELF(false))
	dynamic := writeFile(t, filepath.Join(dir, "dynamic"), minimalELF(true))
	text := writeFile(t, filepath.Join(dir, "script"), []byte("#!/bin/sh\n"))
	if err := CheckStatic(static); err != nil {
		t.Errorf("static: %v", err)
	}
	err := CheckStatic(dynamic)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("dynamic: %v", err)
	}
	if err := CheckStatic(text); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("not elf: %v", err)
	}
	if err := CheckStatic(filepath.Join(dir, "missing")); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	if _, err := os.Stat("/bin/true"); err == nil {
		if err := CheckStatic("/bin/true"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("/bin/true (dynamic on Debian): %v", err)
		}
	}
}
