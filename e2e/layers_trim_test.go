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

// trimShell defines, for a guest shell line, first (the first 64 KiB
// cluster-aligned block of a file's first extent: a discard of part of a
// cluster is ignored) and trimmed (trims the upper layer's file system,
// which fstrim reaches under /workspace's overlay, until the 256 KiB run
// at block $1 of its disk reads as zeroes, read past the guest's caches,
// and prints its count of non-zero bytes). A removed file's blocks reach
// ext4's allocator from its journal commit's callback, which a sync may
// return before, so one fstrim may not see them free yet; the loop is
// bounded (50 tries), and a run that never reads zeroes fails the test.
const trimShell = `first() { b=$(filefrag -e "$1" | awk '$1=="0:"{print $4}'); b=${b%..}; echo $(( (b+15)/16*16 )); }
zr() { dd if=$(awk '$2=="/run/pyro/ws/upper"{print $1}' /proc/mounts) iflag=direct bs=4096 skip=$1 count=64 status=none | tr -d '\000' | wc -c; }
trimmed() { n=0; while z=$(zr $1); [ "$z" != 0 ] && [ $n -lt 50 ]; do sync; fstrim /run/pyro/ws/upper; n=$((n+1)); sleep 0.1; done; echo $z; }
`

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
	m := wsExec(t, env, id, "sh", "-c", trimShell+"dd if=/dev/urandom of=big bs=1M count=64 status=none && sync && sha256sum big | cut -d' ' -f1 && first big")
	lines := strings.Fields(m["stdout"].(string))
	if len(lines) != 2 {
		t.Fatalf("write: %v", m)
	}
	sum, block := lines[0], lines[1]
	wsExec(t, env, id, "true")
	held, _ := lastCheckpoint(t, env, id) // the state with big
	frozen := frozenLayerSums(t, dir)

	m = wsExec(t, env, id, "sh", "-c", trimShell+"rm big && trimmed "+block)
	if strings.TrimSpace(m["stdout"].(string)) != "0" {
		t.Fatalf("a trimmed file's blocks read %s non-zero bytes (want 0)", strings.TrimSpace(m["stdout"].(string)))
	}

	// A file written and trimmed in the top layer gives its space back.
	m = wsExec(t, env, id, "sh", "-c", trimShell+"dd if=/dev/urandom of=big2 bs=1M count=64 status=none && sync && b=$(first big2) && rm big2 && trimmed $b")
	if strings.TrimSpace(m["stdout"].(string)) != "0" {
		t.Fatalf("a trimmed file's blocks in the top read %s non-zero bytes (want 0)", strings.TrimSpace(m["stdout"].(string)))
	}
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
	m = wsExec(t, env, id, "sh", "-c", trimShell+"ls; zr "+block)
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
