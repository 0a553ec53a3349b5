package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

func leafNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestSpareLeaf: an exec takes the leaf made ahead instead of creating
// one; a spare that a root command removed is replaced by a new leaf;
// other kinds never take it.
func TestSpareLeaf(t *testing.T) {
	dir := t.TempDir()
	u := newUserCgroup(dir)
	u.makeSpare()
	u.makeSpare() // one spare at a time
	if got := leafNames(t, dir); !slices.Equal(got, []string{"exec-1"}) {
		t.Fatalf("after makeSpare: %v, want [exec-1]", got)
	}
	l, err := u.newLeaf("exec")
	if err != nil || l.path != filepath.Join(dir, "exec-1") {
		t.Fatalf("exec leaf %v, %v: want the spare", l, err)
	}
	if got := leafNames(t, dir); !slices.Equal(got, []string{"exec-1"}) {
		t.Fatalf("the exec made a leaf of its own: %v", got)
	}
	u.makeSpare()
	if err := os.Remove(filepath.Join(dir, "exec-2")); err != nil {
		t.Fatal(err)
	}
	l, err = u.newLeaf("exec")
	if err != nil || l.path != filepath.Join(dir, "exec-3") {
		t.Fatalf("exec leaf after its spare was removed: %v, %v", l, err)
	}
	u.makeSpare()
	l, err = u.newLeaf("svc")
	if err != nil || l.path != filepath.Join(dir, "svc-5") {
		t.Fatalf("service leaf %v, %v", l, err)
	}
	if got := leafNames(t, dir); !slices.Equal(got, []string{"exec-1", "exec-3", "exec-4", "svc-5"}) {
		t.Fatalf("leaves %v", got)
	}
}

// testCgroup makes a cgroup v2 directory for a test's user work, or skips
// (it needs root and a writable cgroup2 mount).
func testCgroup(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a cgroup of its own")
	}
	for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		var st unix.Statfs_t
		if unix.Statfs(root, &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			continue
		}
		dir, err := os.MkdirTemp(root, "pyro-test-")
		if err != nil {
			continue
		}
		t.Cleanup(func() {
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.IsDir() {
					_ = unix.Rmdir(filepath.Join(dir, e.Name()))
				}
			}
			_ = unix.Rmdir(dir)
		})
		return dir
	}
	t.Skip("no writable cgroup2 mount")
	return ""
}

// TestExecRunsInSpareLeaf: a new agent (as a memory snapshot's guest
// is saved) already has its first exec's leaf; the exec runs in it, and
// once the result is sent its leaf is gone and the next one is made.
func TestExecRunsInSpareLeaf(t *testing.T) {
	cg := testCgroup(t)
	a := New(Options{UserCgroup: cg})
	if got := leafNames(t, cg); !slices.Equal(got, []string{"exec-1"}) {
		t.Fatalf("a new agent's leaves: %v, want [exec-1] made ahead", got)
	}
	c := serveTestAgent(t, a)
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"cat", "/proc/self/cgroup"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, filepath.Base(cg)+"/exec-1\n") {
		t.Fatalf("exec ran in %q (exit %d, %s), want the spare exec-1", res.Stdout, res.ExitCode, res.Stderr)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := leafNames(t, cg)
		if slices.Equal(got, []string{"exec-2"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaves after the exec: %v, want [exec-2] (its own removed, the next made)", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
