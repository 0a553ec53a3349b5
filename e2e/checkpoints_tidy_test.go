package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// underLayerLock runs fn holding the workspace's layer lock, as pyro's own
// layer changes do: the housekeeping after a command (staging the next
// overlay, merges, GC) runs in the supervisor after the command returned,
// so a test that looks at the layer files or QEMU's descriptors looks
// between two such changes, never in the middle of one.
func underLayerLock(t *testing.T, dir string, fn func()) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, ".layers.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	fn()
}

// chainLayers counts a workspace's qcow2 layers but the next overlay made
// ahead (it is made after each command that needs one, in the background).
func chainLayers(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	underLayerLock(t, dir, func() {
		next := nextLayer(dir)
		m, _ := filepath.Glob(filepath.Join(dir, "layers", "*.qcow2"))
		for _, p := range m {
			if p != next {
				n++
			}
		}
	})
	return n
}

// nextLayer is the path of the workspace's next overlay, made ahead and
// handed to QEMU as a node of its own (workspace chain_next.go): the next
// top, empty, never a saved state. "" when there is none.
func nextLayer(dir string) string {
	var next struct {
		Layer string `json:"layer"`
	}
	if b, err := os.ReadFile(filepath.Join(dir, "layers", "next")); err == nil {
		_ = json.Unmarshal(b, &next)
	}
	if next.Layer == "" {
		return ""
	}
	return filepath.Join(dir, next.Layer)
}

// TestLayersKillSupervisorAfterExec kills the supervisor (and with it
// QEMU) right after writing commands returned, while its housekeeping
// (merging past the count cap, folding the listing, making the next
// overlay, flushing the live layer) may be under way: every command that
// returned stays, undo goes back exactly one command, and diff --since
// names exactly what the last command touched.
func TestLayersKillSupervisorAfterExec(t *testing.T) {
	env, id, _ := checkpointedWorkspace(t)
	env = append(env, "PYRO_CHECKPOINT_MAX_COUNT=2") // merges past 2+16 layers
	for i := range 20 {
		wsExec(t, env, id, "sh", "-c", "echo "+strings.Repeat("x", i)+" >> log.txt; echo "+string(rune('a'+i))+" > f"+string(rune('a'+i)))
	}
	for round := range 3 {
		wsExec(t, env, id, "sh", "-c", "echo round >> log.txt; echo "+string(rune('0'+round))+" > r"+string(rune('0'+round)))
		// The housekeeping starts as the command returns: kill at
		// once, then after a few ms, then a bit later.
		time.Sleep(time.Duration(round*round*15) * time.Millisecond)
		pid := findPids(t, id)["supervisor"]
		if pid == 0 {
			t.Fatal("no supervisor")
		}
		syscall.Kill(pid, syscall.SIGKILL)
		// The next command restarts the guest on the same layers.
		m := wsExec(t, env, id, "cat", "r"+string(rune('0'+round)))
		if m["stdout"] != string(rune('0'+round))+"\n" {
			t.Fatalf("round %d: after the kill: %v", round, m)
		}
	}
	wsExec(t, env, id, "sh", "-c", "echo last > last.txt; rm r0")
	last, _ := lastCheckpoint(t, env, id)
	var d struct{ Added, Modified, Deleted []string }
	mustWS(t, env, &d, "diff", id, "--since", strconv.Itoa(last))
	if strings.Join(d.Added, ",") != "last.txt" || strings.Join(d.Deleted, ",") != "r0" || len(d.Modified) != 0 {
		t.Fatalf("diff --since the last command: %+v", d)
	}
	mustWS(t, env, nil, "undo", id)
	m := wsExec(t, env, id, "sh", "-c", "cat r0 r1 r2; ls last.txt 2>&1; wc -l < log.txt")
	if out, _ := m["stdout"].(string); !strings.HasPrefix(out, "0\n1\n2\n") || !strings.Contains(out, "No such file") || !strings.HasSuffix(out, "23\n") {
		t.Fatalf("after undo: %v", m)
	}
}
