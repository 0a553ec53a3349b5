package qemu

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// SplitRAM's two halves restore what the saved stream does: its RAM
// memory holds exactly what loading the whole stream puts in guest RAM
// (pages sent twice, pages cleared again, fill bytes), and its stream
// loads the same ROM and device state while carrying no page of guest
// RAM (a fork's QEMU maps that memory instead of reading it).
func TestSplitRAMMapsWhatTheStreamLoads(t *testing.T) {
	in := savedStream()
	wantRAM, wantROM, wantTail := load(t, in)
	var out bytes.Buffer
	var mem []byte
	st, err := SplitRAM(bytes.NewReader(in), &out, func(name string, n uint64) ([]byte, error) {
		if name != "microvm.ram" || n != testRAM {
			t.Errorf("asked for %q of %d bytes", name, n)
		}
		mem = make([]byte, n)
		return mem, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem, wantRAM) {
		t.Error("the split RAM differs from what the stream loads")
	}
	ram, rom, tail := load(t, out.Bytes())
	if !bytes.Equal(ram, make([]byte, testRAM)) {
		t.Error("the split stream still writes guest RAM")
	}
	if !bytes.Equal(rom, wantROM) || !bytes.Equal(tail, wantTail) {
		t.Error("the split stream loads other ROM or device state")
	}
	if st.RAMPages != 3 || out.Len() >= len(in)-3*pageSize {
		t.Errorf("stats %+v, %d of %d bytes", st, out.Len(), len(in))
	}
	// Memory of another size is refused, and so is a stream without RAM.
	if _, err := SplitRAM(bytes.NewReader(in), &bytes.Buffer{}, func(string, uint64) ([]byte, error) {
		return make([]byte, pageSize), nil
	}); err == nil {
		t.Error("memory of the wrong size accepted")
	}
	refused := errors.New("no")
	if _, err := SplitRAM(bytes.NewReader(in), &bytes.Buffer{}, func(string, uint64) ([]byte, error) { return nil, refused }); !errors.Is(err, refused) {
		t.Errorf("refused memory: %v", err)
	}
}

// A fork's RAM file is the last descriptor QEMU gets, read-only, after
// a layer chain and the network socket, and -mem-path names it.
func TestForkRAMDescriptor(t *testing.T) {
	spec := testSpec(t)
	spec.WorkspaceBase = spec.RootDisk
	spec.WorkspaceChain = []string{spec.WorkspaceDisk, spec.Kernel, spec.Initrd}
	withNetworkFile(t, &spec)
	spec.RestoreState = spec.Initrd
	spec.RestoreRAM = filepath.Join(t.TempDir(), "ram")
	if err := os.WriteFile(spec.RestoreRAM, []byte("ram"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd, cleanup, err := New("/usr/bin/qemu-system-x86_64", "tcg").Command(spec, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	n := fdRAM(spec)
	if n != 3+len(cmd.ExtraFiles)-2 { // the state file comes last (fdState)
		t.Fatalf("ram descriptor %d of %d", n, 3+len(cmd.ExtraFiles))
	}
	f := cmd.ExtraFiles[n-3]
	st, _ := f.Stat()
	want, _ := os.Stat(spec.RestoreRAM)
	if !os.SameFile(st, want) {
		t.Fatalf("fd %d is not the ram file", n)
	}
	if fl, _ := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); fl&unix.O_ACCMODE != unix.O_RDONLY {
		t.Errorf("ram file handed over writable")
	}
	if got := argAfter(New("q", "tcg").Args(spec), "-mem-path", ""); got != "/proc/self/fd/"+strconv.Itoa(n) {
		t.Errorf("-mem-path %q", got)
	}
	spec.RestoreRAM = ""
	if got := argAfter(New("q", "tcg").Args(spec), "-mem-path", ""); got != "" {
		t.Errorf("no ram file, yet -mem-path %q", got)
	}
}
