package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestFrozenLayersNotWritableByQEMU plays a QEMU the guest took over: it
// may use any descriptor it holds. Of a chained workspace's layers it must
// hold only the live top writable, never a frozen layer (a checkpoint or
// snapshot a later undo or reset restores): after checkpoints, merges past
// the count cap and a snapshot, and again after a restart that boots over
// the chain. Merged layers, whose files pyro deletes, must not stay open.
func TestFrozenLayersNotWritableByQEMU(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	// Count cap 2: past it and the merge slack (16) the chain merges.
	env = append(env, "PYRO_CHECKPOINT_MAX_COUNT=2")
	var w wsStatus
	mustWS(t, env, &w, "create", "--checkpoints", baseEnv)
	id := w.WorkspaceID
	defer ws(t, env, nil, "delete", id)
	dir := filepath.Join(home, "workspaces", id)
	for i := range 22 {
		wsExec(t, env, id, "sh", "-c", fmt.Sprintf("echo %d > f%d", i, i))
	}
	mustWS(t, env, nil, "snapshot", "create", id, "s1")
	wsExec(t, env, id, "sh", "-c", "echo after > g")
	if n := chainLayers(t, dir); n >= 22 {
		t.Fatalf("%d layers after 23 checkpoints under a cap of 2: nothing merged", n)
	}
	checkLayerFDs(t, dir)

	mustWS(t, env, nil, "stop", id)
	mustWS(t, env, nil, "start", id)
	checkLayerFDs(t, dir)
	wsExec(t, env, id, "sh", "-c", "echo restarted > h")
	checkLayerFDs(t, dir)
}

// checkLayerFDs fails the test if the workspace's QEMU holds a layer other
// than the top open for writing, or a deleted layer open at all.
func checkLayerFDs(t *testing.T, dir string) {
	t.Helper()
	underLayerLock(t, dir, func() { checkLayerFDsNow(t, dir) })
}

func checkLayerFDsNow(t *testing.T, dir string) {
	t.Helper()
	pid, err := os.ReadFile(filepath.Join(dir, "vmm.pid"))
	if err != nil {
		t.Fatal(err)
	}
	top, err := os.ReadFile(filepath.Join(dir, "layers", "top"))
	if err != nil {
		t.Fatal(err)
	}
	topPath := filepath.Join(dir, string(top))
	// The next overlay is the next top, so QEMU holds it writable.
	nextPath := nextLayer(dir)
	proc := "/proc/" + strings.TrimSpace(string(pid))
	fds, err := os.ReadDir(proc + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	frozen := 0
	for _, fd := range fds {
		target, err := os.Readlink(proc + "/fd/" + fd.Name())
		if err != nil || !strings.HasPrefix(target, dir+"/") {
			continue
		}
		if strings.HasSuffix(target, " (deleted)") {
			t.Errorf("qemu holds a deleted file open: %s (fd %s)", target, fd.Name())
			continue
		}
		if !strings.HasSuffix(target, ".qcow2") && !strings.HasSuffix(target, ".raw") && !strings.HasSuffix(target, ".ext4") {
			continue
		}
		info, err := os.ReadFile(proc + "/fdinfo/" + fd.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			v, ok := strings.CutPrefix(line, "flags:")
			if !ok {
				continue
			}
			flags, _ := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			switch {
			case target == topPath, nextPath != "" && target == nextPath:
			case flags&syscall.O_ACCMODE != syscall.O_RDONLY:
				t.Errorf("qemu holds frozen layer %s open for writing (fd %s, flags %o)", strings.TrimPrefix(target, dir+"/"), fd.Name(), flags)
			default:
				frozen++
			}
		}
	}
	if frozen == 0 {
		t.Fatalf("qemu holds no frozen layer at all (top %s): the check saw nothing", top)
	}
	t.Logf("qemu holds %d read-only descriptors of frozen layers; top %s", frozen, top)
}
