package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// trimUpper is a shell line that trims the guest's upper layer file system
// (/workspace is an overlay, which fstrim refuses).
const trimUpper = "fstrim /run/pyro/ws/upper"

// TestLayersTrimAfterCheckpoints: past the first checkpoint, the guest's
// discards still reach the top layer (it is a node QEMU got over QMP), and
// never what a checkpoint below it holds.
//   - A file written in the top, removed and trimmed leaves the top's file
//     on the host small (the top kept all 64 MiB when its node ignored
//     discards).
//   - A file a checkpoint holds, removed and trimmed in the top, reads as
//     zeroes on the guest's disk, before and after a restart: the trimmed
//     clusters do not fall through to the frozen layer's bytes. The frozen
//     layers are not touched, and undo brings the file back byte for byte.
func TestLayersTrimAfterCheckpoints(t *testing.T) {
	env, id, _ := checkpointedWorkspace(t)
	dir := filepath.Join(homeOf(env), "workspaces", id)

	// A file in a checkpoint: written, then frozen by the next command's
	// checkpoint.
	m := wsExec(t, env, id, "sh", "-c", "dd if=/dev/urandom of=big bs=1M count=64 status=none && sync && sha256sum big | cut -d' ' -f1 && filefrag -e big | awk '$1==\"0:\"{print $4}'")
	lines := strings.Fields(m["stdout"].(string))
	if len(lines) != 2 {
		t.Fatalf("write: %v", m)
	}
	sum := lines[0]
	// A 256 KiB run of the file's first extent, aligned to the overlays'
	// 64 KiB clusters (a discard of part of a cluster is ignored).
	first, err := strconv.Atoi(strings.TrimSuffix(lines[1], ".."))
	if err != nil {
		t.Fatalf("filefrag: %v", m)
	}
	block := (first + 15) / 16 * 16
	wsExec(t, env, id, "true")
	held, _ := lastCheckpoint(t, env, id) // the state with big
	frozen := frozenLayerSums(t, dir)

	// zeroRun counts the non-zero bytes of that run on the upper disk,
	// read past the guest's caches.
	zeroRun := "dev=$(awk '$2==\"/run/pyro/ws/upper\"{print $1}' /proc/mounts) && dd if=$dev iflag=direct bs=4096 skip=" +
		strconv.Itoa(block) + " count=64 status=none | tr -d '\\000' | wc -c"
	m = wsExec(t, env, id, "sh", "-c", "rm big && sync && "+trimUpper+" && "+zeroRun)
	if strings.TrimSpace(m["stdout"].(string)) != "0" {
		t.Fatalf("a trimmed file's blocks read %s non-zero bytes (want 0)", strings.TrimSpace(m["stdout"].(string)))
	}

	// A file written and trimmed in the top layer gives its space back.
	wsExec(t, env, id, "sh", "-c", "dd if=/dev/urandom of=big2 bs=1M count=64 status=none && sync && rm big2 && sync && "+trimUpper)
	underLayerLock(t, dir, func() {
		top, err := os.ReadFile(filepath.Join(dir, "layers", "top"))
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, string(top)), &st); err != nil {
			t.Fatal(err)
		}
		if used := st.Blocks * 512; used > 16<<20 {
			t.Errorf("top layer %s holds %d MiB after 64 MiB written, removed and trimmed", top, used>>20)
		}
	})

	mustWS(t, env, nil, "stop", id)
	mustWS(t, env, nil, "start", id)
	m = wsExec(t, env, id, "sh", "-c", "ls; "+zeroRun)
	if out := m["stdout"].(string); strings.Contains(out, "big") || !strings.HasSuffix(out, "\n0\n") {
		t.Fatalf("after a restart: %q (want no big, 0 non-zero bytes)", out)
	}
	for p, s := range frozenLayerSums(t, dir) {
		if w, ok := frozen[p]; ok && w != s {
			t.Errorf("frozen layer %s changed", p)
		}
	}
	mustWS(t, env, nil, "undo", id, "--to", strconv.Itoa(held))
	if m := wsExec(t, env, id, "sha256sum", "big"); !strings.HasPrefix(m["stdout"].(string), sum+" ") {
		t.Fatalf("after undo: %v, want %s", m, sum)
	}
}

// frozenLayerSums hashes a workspace's qcow2 layers but the live top and
// the next overlay made ahead (the layers a checkpoint or snapshot holds).
func frozenLayerSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	underLayerLock(t, dir, func() {
		skip := map[string]bool{nextLayer(dir): true}
		if top, err := os.ReadFile(filepath.Join(dir, "layers", "top")); err == nil {
			skip[filepath.Join(dir, string(top))] = true
		}
		m, _ := filepath.Glob(filepath.Join(dir, "layers", "*.qcow2"))
		for _, p := range m {
			if skip[p] {
				continue
			}
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			if _, err := io.Copy(h, f); err != nil {
				t.Fatal(err)
			}
			f.Close()
			sums[p] = hex.EncodeToString(h.Sum(nil))
		}
	})
	if len(sums) == 0 {
		t.Fatal("no frozen layer")
	}
	return sums
}
