package qemu

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A chained workspace's frozen layers reach QEMU read-only: only the top
// (the drive's own set) gets a writable descriptor, so a QEMU the guest
// took over cannot rewrite a snapshot or checkpoint it boots over.
func TestChainLowerLayersReadOnly(t *testing.T) {
	spec := testSpec(t)
	layers := spec.Dir.Path("layers")
	if err := os.Mkdir(layers, 0o755); err != nil {
		t.Fatal(err)
	}
	spec.WorkspaceChain = []string{spec.WorkspaceDisk}
	for i := 1; i <= 3; i++ {
		p := filepath.Join(layers, fmt.Sprintf("%d.qcow2", i))
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		spec.WorkspaceChain = append(spec.WorkspaceChain, p)
	}
	top := spec.WorkspaceChain[3]
	cmd, cleanup, err := New("/usr/bin/qemu-system-x86_64", "tcg").Command(spec, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	topSt, _ := os.Stat(top)
	seen := map[string]int{}
	for i, f := range cmd.ExtraFiles {
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range spec.WorkspaceChain {
			if want, _ := os.Stat(p); os.SameFile(st, want) {
				seen[p]++
				if fl&unix.O_ACCMODE != unix.O_RDONLY && !os.SameFile(st, topSt) {
					t.Errorf("fd %d: frozen layer %s handed to qemu writable", 3+i, p)
				}
			}
		}
	}
	for _, p := range spec.WorkspaceChain {
		if seen[p] == 0 {
			t.Errorf("%s not handed to qemu", p)
		}
	}
	args := New("q", "tcg").Args(spec)
	for i, p := range spec.WorkspaceChain[:3] {
		want := fmt.Sprintf("fd=%d,set=%d,opaque=%s", fdChain(spec)+i, fdsetChain+i, fdTag(p, false))
		if got := argAfter(args, "-add-fd", fmt.Sprintf("fd=%d,", fdChain(spec)+i)); got != want {
			t.Errorf("-add-fd of %s: %q, want %q", p, got, want)
		}
	}
}
