package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
)

// TestWarmSnapshotWithoutZeroPages (#14): a golden snapshot's state holds
// no zero-page records of guest RAM (each one made a restoring QEMU fault
// in a page: ~230k of them, most of a workspace restore's CPU without huge
// pages), and a workspace restored from it works and reads back what it
// wrote. Before, the saved migration stream was published as QEMU wrote it.
func TestWarmSnapshotWithoutZeroPages(t *testing.T) {
	requireE2E(t)
	_, env := warmHome(t)
	snap := prepareSnapshot(t, env, "--workspace", baseEnv)
	f, err := os.Open(filepath.Join(snap, "state.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := qemu.CompactState(f, discard{})
	if err != nil {
		t.Fatalf("the snapshot's state is not a stream the compactor knows: %v", err)
	}
	if st.ZeroDropped != 0 || st.Pages < 1000 {
		t.Fatalf("snapshot state has %d zero-page records of guest RAM (want 0) and %d pages", st.ZeroDropped, st.Pages)
	}

	var w struct {
		WorkspaceID string `json:"workspace_id"`
		Start       string `json:"start"`
	}
	mustWS(t, env, &w, "create", baseEnv)
	defer ws(t, env, nil, "delete", w.WorkspaceID)
	if w.Start != "warm" {
		t.Fatalf("workspace start = %q, want warm", w.Start)
	}
	m := wsExec(t, env, w.WorkspaceID, "sh", "-c", "seq 100000 > /workspace/n && sha256sum < /workspace/n && tail -1 /workspace/n")
	out, _ := m["stdout"].(string)
	if !strings.HasSuffix(out, "100000\n") || !strings.Contains(out, "-") {
		t.Fatalf("restored workspace: %v", m)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestWarmSnapshotPrimed (#14): a golden snapshot's guest ran a command
// before it was saved, so a restored guest's first command finds the
// programs it loads in the page cache instead of reading them through the
// guest's block path, translated afresh by every restored QEMU. The probe
// is fincore, which maps nothing of /usr/bin/true: before, 0 of its pages
// were cached in a restored guest.
func TestWarmSnapshotPrimed(t *testing.T) {
	requireE2E(t)
	_, env := warmHome(t)
	if r := pyro(t, env, "prepare", baseEnv); r.code != 0 {
		t.Fatalf("prepare: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
	m, lines := warmRun(t, env, baseEnv, "--", "fincore", "--raw", "--noheadings", "--output", "PAGES", "/usr/bin/true")
	if m["start"] != "warm" {
		t.Fatalf("start = %v, want warm", m["start"])
	}
	if len(lines) != 1 || lines[0] == "0" || lines[0] == "" {
		t.Fatalf("cached pages of /usr/bin/true in a restored guest: %q, want more than 0", lines)
	}
}
