package e2e

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/hostwrite"
)

// A push into a stopped workspace is written into its upper layer on the
// host (workspace_hostpush.go, internal/hostwrite).

// hostPushTree makes a tree with what a push must keep: nested
// directories (one setgid+sticky, one empty), regular files of several
// sizes and modes (setuid, setgid, read-only, executable, empty), a
// relative and an absolute symlink, and nanosecond modification times.
func hostPushTree(t *testing.T) string {
	t.Helper()
	src := t.TempDir()
	blob := func(n int) []byte { b := make([]byte, n); rand.Read(b); return b }
	files := []struct {
		name string
		body []byte
		mode uint32
	}{
		{"top/big.bin", blob(3<<20 + 7), 0o644},
		{"top/a b.txt", []byte("spaces\n"), 0o600},
		{"top/run.sh", []byte("#!/bin/sh\necho ok\n"), 0o755},
		{"top/suid", blob(1000), 0o4755},
		{"top/sgid", blob(10), 0o2750},
		{"top/ro", []byte("ro\n"), 0o444},
		{"top/empty", nil, 0o644},
		{"top/d/e/deep.txt", []byte("deep\n"), 0o640},
		{"top/shared/x", []byte("x\n"), 0o664},
		{"other.txt", []byte("second top-level entry\n"), 0o644},
	}
	for _, f := range files {
		p := filepath.Join(src, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.body, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(src, "top", "emptydir"), 0o700)
	os.Symlink("d/e/deep.txt", filepath.Join(src, "top", "rel"))
	os.Symlink("/etc/passwd", filepath.Join(src, "top", "abs"))
	if err := syscall.Chmod(filepath.Join(src, "top", "shared"), 0o3775); err != nil {
		t.Fatal(err)
	}
	// Times last (deepest first), each with its own nanoseconds.
	i := int64(0)
	var paths []string
	filepath.Walk(src, func(p string, _ os.FileInfo, _ error) error { paths = append(paths, p); return nil })
	for k := len(paths) - 1; k > 0; k-- {
		i++
		ts := time.Unix(1700000000+i*1000, i*7777777+1)
		tv := []syscall.Timespec{syscall.NsecToTimespec(ts.UnixNano()), syscall.NsecToTimespec(ts.UnixNano())}
		if err := utimesNoFollow(paths[k], tv); err != nil {
			t.Fatal(err)
		}
	}
	return src
}

func utimesNoFollow(p string, ts []syscall.Timespec) error {
	uts := []unix.Timespec{unix.Timespec(ts[0]), unix.Timespec(ts[1])}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, uts, unix.AT_SYMLINK_NOFOLLOW)
}

// guestListing lists dir in the guest: per entry its type, mode, owner,
// modification time (ns), size and digest of files, link target.
func guestListing(t *testing.T, env []string, id, dir string) string {
	t.Helper()
	m := wsExec(t, env, id, "sh", "-c", "cd "+dir+" && find . -mindepth 1 -printf '%p %y %m %U:%G %T@ %l\\n' | sort && "+
		"find . -type f -exec sha256sum {} + | sort")
	if fmt.Sprint(m["exit_code"]) != "0" {
		t.Fatalf("listing %s: %v", dir, m)
	}
	return strings.TrimSpace(fmt.Sprint(m["stdout"]))
}

// TestHostPushMatchesGuestPush pushes one tree into a stopped workspace
// (on the host) and into the same workspace running (through the guest),
// and compares what the guest sees of both: content, types, modes
// (setuid/setgid/sticky), owners, nanosecond mtimes and link targets.
func TestHostPushMatchesGuestPush(t *testing.T) {
	requireE2E(t)
	requireConfinable(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	src := hostPushTree(t)
	mustWS(t, env, nil, "stop", id)
	var r pushResult
	start := time.Now()
	mustWS(t, env, &r, "sync", "push", id, src, "--dest", "/workspace/h")
	t.Logf("host push: %s", time.Since(start))
	if r.Transfer != "host" {
		t.Fatalf("push into a stopped workspace: transfer %q, want host", r.Transfer)
	}
	var st wsStatus
	mustWS(t, env, &st, "status", id)
	if st.State != "stopped" {
		t.Fatalf("a host push left the workspace %s", st.State)
	}
	mustWS(t, env, nil, "start", id)
	var g pushResult
	// Through the guest: a running quiet workspace would take the host
	// path too (workspace_hostpush_running.go, TestHostPushRunning).
	mustWS(t, append(append([]string{}, env...), "PYRO_HOST_PUSH=0"), &g, "sync", "push", id, src, "--dest", "/workspace/g")
	if g.Transfer == "host" {
		t.Fatal("PYRO_HOST_PUSH=0 pushed through the host")
	}
	if r.FileCount != g.FileCount || r.Bytes != g.Bytes {
		t.Errorf("counts: host %d files %d bytes, guest %d files %d bytes", r.FileCount, r.Bytes, g.FileCount, g.Bytes)
	}
	host, guest := guestListing(t, env, id, "/workspace/h"), guestListing(t, env, id, "/workspace/g")
	if host != guest {
		t.Fatalf("host push differs from guest push:\nhost:\n%s\nguest:\n%s", host, guest)
	}
	if !strings.Contains(host, "./top/suid f 4755 0:0") || !strings.Contains(host, "./top/shared d 3775") {
		t.Fatalf("modes lost:\n%s", host)
	}
}

// TestHostPushKilled kills the pyro process of a host push with SIGKILL
// while debugfs writes the new layer: the workspace is as before the push
// (nothing of it in /workspace), and the same push then succeeds.
func TestHostPushKilled(t *testing.T) {
	requireE2E(t)
	requireConfinable(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)
	before := guestListing(t, env, id, "/workspace")
	src := randomTree(t, 400) // 100 MiB: debugfs runs for a while
	mustWS(t, env, nil, "stop", id)
	killed := false
	for attempt := 0; attempt < 3 && !killed; attempt++ {
		cmd := exec.Command(pyroBin, "workspace", "--json", "sync", "push", id, src)
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill it once its debugfs child runs.
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if childPid(cmd.Process.Pid, "debugfs") != 0 {
				cmd.Process.Kill()
				killed = true
				break
			}
			if cmd.ProcessState != nil {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		cmd.Wait()
		if !killed {
			t.Logf("attempt %d: push ended before its debugfs was seen", attempt)
			// Undo a push that went through: the next attempt needs a fresh dest.
			mustWS(t, env, nil, "reset", id)
			mustWS(t, env, nil, "stop", id)
		}
	}
	if !killed {
		t.Fatal("never caught the push's debugfs running")
	}
	time.Sleep(200 * time.Millisecond) // debugfs dies with its parent (Pdeathsig)
	mustWS(t, env, nil, "start", id)
	if after := guestListing(t, env, id, "/workspace"); after != before {
		t.Fatalf("a killed host push changed /workspace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	mustWS(t, env, nil, "stop", id)
	var r pushResult
	mustWS(t, env, &r, "sync", "push", id, src)
	if r.Transfer != "host" || r.FileCount != 400 {
		t.Fatalf("push after the kill: %+v", r)
	}
	mustWS(t, env, nil, "start", id)
	m := wsExec(t, env, id, "sh", "-c", "find /workspace/tree -type f | wc -l")
	if strings.TrimSpace(fmt.Sprint(m["stdout"])) != "400" {
		t.Fatalf("after the retried push: %v", m)
	}
}

// requireConfinable skips where the host push is not used: a kernel
// without Landlock, on which its debugfs cannot be confined.
func requireConfinable(t *testing.T) {
	t.Helper()
	if !hostwrite.Confinable() {
		t.Skip("this kernel has no Landlock: sync push into a stopped workspace goes through the guest (start it first)")
	}
}

// randomTree makes a source directory holding tree/<i%10>/<i> for n files
// of 256 KiB each, every one different (their first bytes random).
func randomTree(t *testing.T, n int) string {
	t.Helper()
	src := t.TempDir()
	big := make([]byte, 256<<10)
	for i := 0; i < n; i++ {
		rand.Read(big[:64])
		p := filepath.Join(src, "tree", strconv.Itoa(i%10), strconv.Itoa(i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, big, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return src
}
