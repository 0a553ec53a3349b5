package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWarmWorkspaceMounted: a new unseeded workspace restores a guest that
// had /workspace mounted before the snapshot was saved (its upper disk's
// last mount is the snapshot build's, not after the create began, and no
// disk resize reached the guest after the restore), and
// two such workspaces each write their own disk: each sees only its own
// files, the disks pass e2fsck after a stop, and a start that mounts them
// afresh reads back what each wrote. A guest whose caches did not match
// its new disk would write a file system that e2fsck refuses, or lose the
// files on the fresh mount.
func TestWarmWorkspaceMounted(t *testing.T) {
	requireE2E(t)
	home, env := warmHome(t)
	prepareSnapshot(t, env, "--workspace", baseEnv)
	time.Sleep(1100 * time.Millisecond) // mount times have second resolution
	began := time.Now()
	type wsOut struct {
		WorkspaceID string `json:"workspace_id"`
		Start       string `json:"start"`
	}
	ids := map[string]string{}
	for _, who := range []string{"alpha", "beta"} {
		var w wsOut
		mustWS(t, env, &w, "create", baseEnv)
		t.Cleanup(func() { ws(t, env, nil, "delete", w.WorkspaceID) })
		ids[who] = w.WorkspaceID
		if w.Start != "warm" {
			log, _ := os.ReadFile(filepath.Join(home, "workspaces", w.WorkspaceID, "supervisor.log"))
			t.Fatalf("workspace %s start = %q, want warm; supervisor log:\n%s", who, w.Start, log)
		}
		disk := filepath.Join(home, "workspaces", w.WorkspaceID, "workspace.ext4")
		if m := lastMount(t, disk); !m.Before(began.Truncate(time.Second)) {
			t.Errorf("workspace %s: upper disk last mounted %s, after the create began (%s): mounted after the restore",
				who, m, began.Format(time.RFC3339))
		}
	}
	for who, id := range ids {
		// The restored guest's disks are the sizes it saw before the save:
		// it is not told to re-read a capacity (virtio-blk logs "new size").
		if m := wsExec(t, env, id, "sh", "-c", "dmesg | grep -c 'new size' || true"); strings.TrimSpace(m["stdout"].(string)) != "0" {
			t.Errorf("workspace %s: the guest re-read a disk's size after the restore: %v", who, m["stdout"])
		}
	}
	for who, id := range ids {
		script := "mkdir -p /workspace/d && echo " + who + " > /workspace/who && head -c 2097152 /dev/urandom > /workspace/d/" + who +
			" && sync && cat /workspace/who && ls /workspace/d && sha256sum /workspace/d/" + who + " | cut -c1-64"
		m := wsExec(t, env, id, "sh", "-c", script)
		out, _ := m["stdout"].(string)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || lines[0] != who || lines[1] != who {
			t.Fatalf("workspace %s (%s) sees %q, want only its own file", who, id, out)
		}
		sum := lines[2]
		mustWS(t, env, nil, "stop", id)
		disk := filepath.Join(home, "workspaces", id, "workspace.ext4")
		if out, err := exec.Command("e2fsck", "-fn", disk).CombinedOutput(); err != nil {
			t.Errorf("workspace %s: e2fsck of its upper disk after a stop: %v\n%s", who, err, out)
		}
		mustWS(t, env, nil, "start", id)
		m = wsExec(t, env, id, "sh", "-c", "cat /workspace/who; ls /workspace/d; sha256sum /workspace/d/"+who+" | cut -c1-64")
		if got, _ := m["stdout"].(string); got != who+"\n"+who+"\n"+sum+"\n" {
			t.Errorf("workspace %s after a stop and start reads %q, want %q (%v)", who, got, who+"\n"+who+"\n"+sum+"\n", m)
		}
	}
}

// lastMount reads an ext4 image's last mount time (dumpe2fs -h).
func lastMount(t *testing.T, img string) time.Time {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs %s: %v %s", img, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Last mount time:"); ok {
			tm, err := time.ParseInLocation("Mon Jan _2 15:04:05 2006", strings.TrimSpace(v), time.Local)
			if err != nil {
				t.Fatalf("last mount time %q: %v", v, err)
			}
			return tm
		}
	}
	t.Fatalf("no last mount time in dumpe2fs output:\n%s", out)
	return time.Time{}
}
