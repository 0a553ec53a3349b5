package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

type exportOut struct {
	FileCount int    `json:"file_count"`
	Bytes     int64  `json:"bytes"`
	Transfer  string `json:"transfer"`
	Kind      string `json:"kind"`
}

// TestExportHostPath: a layered workspace's export is read from its images
// on the host, not streamed through the guest: while it runs (the guest
// freezes its upper layer meanwhile: a file written just before is in),
// and while it is stopped (no boot); seed files from the baseline, changes
// and deletions from the upper layer; the result says which path ran.
func TestExportHostPath(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	seed := t.TempDir()
	writeTree(t, seed, map[string]string{"tree/a.txt": "seed a\n", "tree/gone.txt": "deleted later\n", "tree/sub/b.txt": "seed b\n"})
	// With checkpoints the upper layer is a chain of qcow2 layers, read
	// flattened; without, the raw disk itself.
	for _, flags := range [][]string{nil, {"--checkpoints"}} {
		t.Run(fmt.Sprint("create", flags), func(t *testing.T) { exportHostPath(t, env, seed, flags) })
	}
}

func exportHostPath(t *testing.T, env []string, seed string, flags []string) {
	var w wsStatus
	mustWS(t, env, &w, append([]string{"create", "--seed-path", seed, baseEnv}, flags...)...)
	id := w.WorkspaceID
	defer ws(t, env, nil, "delete", id)
	res := wsExec(t, env, id, "sh", "-ec", `rm tree/gone.txt; echo changed > tree/sub/b.txt; mkdir tree/new; head -c 300000 /dev/urandom > tree/new/r.bin; sha256sum tree/new/r.bin | cut -c1-64 > /tmp/sum; cat /tmp/sum`)
	if res["exit_code"] != float64(0) {
		t.Fatalf("guest setup: %v", res)
	}
	sum := res["stdout"].(string)

	check := func(out string) {
		t.Helper()
		for name, want := range map[string]string{"a.txt": "seed a\n", "sub/b.txt": "changed\n"} {
			if b, err := os.ReadFile(filepath.Join(out, name)); err != nil || string(b) != want {
				t.Errorf("%s: %q %v, want %q", name, b, err, want)
			}
		}
		if _, err := os.Lstat(filepath.Join(out, "gone.txt")); err == nil {
			t.Error("a file deleted in the guest was exported")
		}
		if b, err := os.ReadFile(filepath.Join(out, "new", "r.bin")); err != nil || len(b) != 300000 {
			t.Errorf("new/r.bin: %d bytes %v", len(b), err)
		} else if got := sha256hex(b); got+"\n" != sum {
			t.Errorf("new/r.bin: sha256 %s, guest says %s", got, sum)
		}
	}
	host := t.TempDir()
	var er exportOut
	mustWS(t, env, &er, "export", id, "tree", "--output", filepath.Join(host, "running"))
	if er.Transfer != "host" || er.FileCount != 3 || er.Bytes != 300000+7+8 {
		t.Errorf("running export: %+v, want transfer host, 3 files, %d bytes", er, 300000+7+8)
	}
	check(filepath.Join(host, "running"))

	mustWS(t, env, nil, "stop", id)
	er = exportOut{}
	mustWS(t, env, &er, "export", id, "tree/sub/b.txt", "--output", filepath.Join(host, "b.txt"))
	if er.Transfer != "host" || er.Kind != "file" {
		t.Errorf("stopped file export: %+v", er)
	}
	mustWS(t, env, &er, "export", id, "tree", "--output", filepath.Join(host, "stopped"))
	check(filepath.Join(host, "stopped"))
	var st wsStatus
	mustWS(t, env, &st, "status", id)
	if st.State != "stopped" {
		t.Errorf("exports of a stopped workspace booted it: %s", st.State)
	}
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
