package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vmdir"
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

// Every node of /workspace's upper disk passes the guest's discards on and
// turns written zeroes into unallocated space, however QEMU got it: the
// drive and the frozen layers on the command line, a checkpoint's overlay
// staged or pushed over QMP, a pushed root switched in. (An overlay added
// without them ignored every discard: a file removed and trimmed after the
// first checkpoint kept its clusters.)
func TestLayerNodesPassDiscards(t *testing.T) {
	spec := testSpec(t)
	spec.WorkspaceChain = []string{spec.WorkspaceDisk, spec.Dir.Path("1.qcow2"), spec.Dir.Path("2.qcow2")}
	args := New("q", "tcg").Args(spec)
	var nodes []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-blockdev" || (args[i] == "-drive" && strings.HasPrefix(args[i+1], "id=workspace,")) {
			nodes = append(nodes, args[i+1])
		}
	}
	if len(nodes) != 3 {
		t.Fatalf("workspace nodes on the command line: %q", nodes)
	}
	for _, n := range nodes {
		opts := strings.Split(n, ",")
		if !slices.Contains(opts, "discard=unmap") || !slices.Contains(opts, "detect-zeroes=unmap") {
			t.Errorf("node %q: want discard=unmap and detect-zeroes=unmap", n)
		}
	}

	dir := vmdir.Dir(t.TempDir())
	f := &fakeQMP{answer: func(cmd string) (any, string) {
		switch cmd {
		case "add-fd":
			return map[string]any{"fdset-id": 20, "fd": 30}, ""
		case "query-fdsets":
			return []any{}, ""
		case "query-block":
			return []any{map[string]any{"device": "workspace", "inserted": map[string]any{"node-name": "ws2"}}}, ""
		case "query-jobs":
			return []any{map[string]any{"id": "pivot-ws4", "status": "concluded"}}, ""
		}
		return nil, ""
	}}
	f.serve(t, dir.Path(vmdir.QMPSock))
	layer := func(name string) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ctx := context.Background()
	if _, err := StageOverlay(ctx, dir, layer("3.qcow2"), "2.qcow2"); err != nil {
		t.Fatal(err)
	}
	if err := PushOverlay(ctx, dir, layer("3.qcow2")); err != nil {
		t.Fatal(err)
	}
	// The pivot's job status is not what this test is about: it may fail
	// past the blockdev-add.
	_ = PivotTop(ctx, dir, layer("4.raw"), nil)
	adds := f.argsOf("blockdev-add")
	if len(adds) != 3 {
		t.Fatalf("blockdev-add calls: %d, want 3", len(adds))
	}
	for _, a := range adds {
		var node struct {
			Discard      string `json:"discard"`
			DetectZeroes string `json:"detect-zeroes"`
		}
		if err := json.Unmarshal(a, &node); err != nil {
			t.Fatal(err)
		}
		if node.Discard != "unmap" || node.DetectZeroes != "unmap" {
			t.Errorf("blockdev-add %s: want discard and detect-zeroes unmap", a)
		}
	}
}
