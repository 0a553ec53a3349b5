package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Layered workspaces with checkpoints: undo, diff --since, crashes during a
// push, and reset to a snapshot after many checkpoints.

type checkpointList struct {
	Checkpoints []struct {
		Number  int    `json:"number"`
		Command string `json:"command"`
	} `json:"checkpoints"`
}

// seedTree writes a small tree with text, binary, nested and symlinked
// entries.
func seedTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"a.txt": "hello\n", "src/main.go": "package main\n", "src/pkg/util.go": "package pkg\n",
		"docs/readme.md": "# docs\n", "docs/deep/x/y.txt": "deep\n",
	})
	blob := make([]byte, 300<<10)
	rand.Read(blob)
	if err := os.WriteFile(filepath.Join(dir, "blob.bin"), blob, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a.txt", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// treeSums maps each entry of root to its kind, mode and content digest.
func treeSums(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[rel] = "link:" + target
		case fi.IsDir():
			out[rel] = "dir"
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			out[rel] = "file:" + strconv.FormatInt(int64(fi.Mode().Perm()&0o700), 8) + ":" + hex.EncodeToString(sum[:])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// exportSums exports /workspace and returns its treeSums.
func exportSums(t *testing.T, env []string, id string) map[string]string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ws")
	mustWS(t, env, nil, "export", id, "/workspace", "--output", out)
	return treeSums(t, out)
}

func sameTree(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s is %q, want %q", what, k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected %s", what, k)
		}
	}
}

// checkpointedWorkspace creates a workspace seeded with seedTree, with
// checkpoints on, in a home of its own; it is deleted when the test ends.
func checkpointedWorkspace(t *testing.T) (env []string, id, seed string) {
	t.Helper()
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env = isolatedHome(t)
	seed = seedTree(t)
	var w wsStatus
	mustWS(t, env, &w, "create", "--seed-path", seed, "--checkpoints", baseEnv)
	t.Cleanup(func() { ws(t, env, nil, "delete", w.WorkspaceID) })
	return env, w.WorkspaceID, seed
}

// homeOf is the PYRO_HOME an isolated home's environment env names.
func homeOf(env []string) string {
	home := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PYRO_HOME="); ok {
			home = v
		}
	}
	return home
}

func lastCheckpoint(t *testing.T, env []string, id string) (int, int) {
	t.Helper()
	var cl checkpointList
	mustWS(t, env, &cl, "checkpoint", "list", id)
	if len(cl.Checkpoints) == 0 {
		return 0, 0
	}
	return cl.Checkpoints[len(cl.Checkpoints)-1].Number, len(cl.Checkpoints)
}

func TestLayersUndoAndSince(t *testing.T) {
	env, id, seed := checkpointedWorkspace(t)
	want := treeSums(t, seed)
	sameTree(t, "seeded", exportSums(t, env, id), want)

	// diff --since names exactly what one command touched.
	wsExec(t, env, id, "sh -c 'echo x > new.txt; echo y >> a.txt; rm docs/readme.md; rm -r docs/deep'")
	n, _ := lastCheckpoint(t, env, id)
	var d struct{ Added, Modified, Deleted []string }
	mustWS(t, env, &d, "diff", id, "--since", strconv.Itoa(n))
	if strings.Join(d.Added, ",") != "new.txt" || strings.Join(d.Modified, ",") != "a.txt" ||
		strings.Join(d.Deleted, ",") != "docs/deep,docs/deep/x,docs/deep/x/y.txt,docs/readme.md" {
		t.Fatalf("diff --since %d: %+v", n, d)
	}
	wsExec(t, env, id, "sh -c 'echo z > later.txt'")
	mustWS(t, env, &d, "diff", id, "--since", strconv.Itoa(n+1))
	if strings.Join(d.Added, ",") != "later.txt" || len(d.Modified)+len(d.Deleted) != 0 {
		t.Fatalf("diff --since %d: %+v", n+1, d)
	}

	// Undo after rm -rf /workspace/* brings every byte back.
	wsExec(t, env, id, "sh -c 'rm -rf /workspace/*'")
	rmN, _ := lastCheckpoint(t, env, id)
	if m := wsExec(t, env, id, "ls", "-A", "/workspace"); m["stdout"] != "" {
		t.Fatalf("rm -rf left %q", m["stdout"])
	}
	var u struct {
		Checkpoint int    `json:"checkpoint"`
		Command    string `json:"command"`
	}
	mustWS(t, env, &u, "undo", id, "--to", strconv.Itoa(rmN))
	if !strings.Contains(u.Command, "rm -rf") {
		t.Fatalf("undo restored %+v, want the state before rm -rf", u)
	}
	if m := wsExec(t, env, id, "cat", "new.txt", "later.txt"); m["stdout"] != "x\nz\n" {
		t.Fatalf("after undo: %v", m)
	}
	mustWS(t, env, &u, "undo", id, "--to", "1")
	sameTree(t, "after undo --to 1", exportSums(t, env, id), want)
}

// TestLayersKillDuringPush kills QEMU in the middle of a sync push: the
// workspace comes back consistent, and undo returns it to exactly the
// state before the push.
func TestLayersKillDuringPush(t *testing.T) {
	env, id, seed := checkpointedWorkspace(t)
	// Through the guest and its transfer disk (a host push into a
	// checkpointed workspace: TestHostPushCheckpointedKilled).
	env = append(env, "PYRO_HOST_PUSH=0")
	big := t.TempDir()
	buf := make([]byte, 1<<20)
	for i := 0; i < 60; i++ {
		rand.Read(buf)
		os.WriteFile(filepath.Join(big, "f"+strconv.Itoa(i)), buf, 0o644)
	}
	before, _ := lastCheckpoint(t, env, id)
	done := make(chan result, 1)
	go func() { done <- ws(t, env, nil, "sync", "push", id, big, "--dest", "/workspace/big") }()
	// Kill once the push's checkpoint is recorded: the push is under way.
	deadline := time.Now().Add(60 * time.Second)
	var pushN int
	for {
		if pushN, _ = lastCheckpoint(t, env, id); pushN > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("push took no checkpoint")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	pid := findPids(t, id)["vmm"]
	if pid == 0 {
		t.Fatal("no QEMU")
	}
	syscall.Kill(pid, syscall.SIGKILL)
	if r := <-done; r.code == 0 {
		// A fast host: the push had ended. Undo below still has to
		// bring back the state before it.
		t.Log("push finished before the kill")
	}
	// Consistent: the next command boots on the same layers.
	if m := wsExec(t, env, id, "cat", "a.txt"); m["stdout"] != "hello\n" {
		t.Fatalf("after kill: %v", m)
	}
	// To the state before the push, whether the kill cut it short or
	// came after it (the cat above took a checkpoint of its own).
	mustWS(t, env, nil, "undo", id, "--to", strconv.Itoa(pushN))
	sameTree(t, "after undo of the killed push", exportSums(t, env, id), treeSums(t, seed))
	// The transfer disk the killed push used serves the next one, exactly.
	var r pushResult
	mustWS(t, env, &r, "sync", "push", id, big, "--dest", "/workspace/big")
	if r.Transfer != "disk" {
		t.Errorf("push after the kill: transfer %q, want disk", r.Transfer)
	}
	out := filepath.Join(t.TempDir(), "big")
	mustWS(t, env, nil, "export", id, "/workspace/big", "--output", out)
	sameTree(t, "push after the kill", treeSums(t, out), treeSums(t, big))
}

// TestLayersResetAfterCheckpoints resets to a named snapshot after many
// checkpointed commands: the snapshot's tree comes back exactly.
func TestLayersResetAfterCheckpoints(t *testing.T) {
	env, id, _ := checkpointedWorkspace(t)
	wsExec(t, env, id, "sh -c 'echo s >> a.txt; mkdir -p gen; head -c 100000 /dev/urandom > gen/r.bin; rm src/main.go'")
	mustWS(t, env, nil, "snapshot", "create", id, "s1")
	want := exportSums(t, env, id)
	const steps = 50
	start := time.Now()
	for i := 1; i <= steps; i++ {
		wsExec(t, env, id, "sh -c 'echo "+strconv.Itoa(i)+" >> a.txt; rm -rf gen src; echo "+strconv.Itoa(i)+" > f"+strconv.Itoa(i)+"'")
	}
	t.Logf("%d checkpointed commands in %v", steps, time.Since(start))
	if _, count := lastCheckpoint(t, env, id); count < steps {
		t.Fatalf("%d checkpoints after %d commands", count, steps)
	}
	mustWS(t, env, nil, "reset", id, "--snapshot", "s1")
	sameTree(t, "after reset to s1", exportSums(t, env, id), want)
}

// killVMMWhen polls until ready says the operation is under way, then kills
// the workspace's QEMU with SIGKILL.
func killVMMWhen(t *testing.T, id string, ready func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !ready() {
		if time.Now().After(deadline) {
			t.Fatal("the operation never got under way")
		}
		time.Sleep(5 * time.Millisecond)
	}
	pid := findPids(t, id)["vmm"]
	if pid == 0 {
		t.Fatal("no QEMU")
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// bigTree writes n MiB of random files.
func bigTree(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	buf := make([]byte, 1<<20)
	for i := 0; i < n; i++ {
		rand.Read(buf)
		os.WriteFile(filepath.Join(dir, "f"+strconv.Itoa(i)), buf, 0o644)
	}
	return dir
}

// TestLayersKillDuringSnapshot kills QEMU while a snapshot is being taken:
// the workspace comes back at its last completed command, and the snapshot
// either exists and restores exactly that tree, or does not exist.
func TestLayersKillDuringSnapshot(t *testing.T) {
	env, id, _ := checkpointedWorkspace(t)
	mustWS(t, env, nil, "sync", "push", id, bigTree(t, 40), "--dest", "/workspace/big")
	wsExec(t, env, id, "sh -c 'echo after-push >> a.txt'")
	want := exportSums(t, env, id)
	done := make(chan result, 1)
	go func() { done <- ws(t, env, nil, "snapshot", "create", id, "s1") }()
	// Kill as soon as the snapshot call has frozen /workspace (the guest
	// logs nothing, so: as soon as the command is running).
	time.Sleep(150 * time.Millisecond)
	pid := findPids(t, id)["vmm"]
	if pid == 0 {
		t.Fatal("no QEMU")
	}
	syscall.Kill(pid, syscall.SIGKILL)
	r := <-done
	t.Logf("snapshot create after the kill: exit %d %s", r.code, strings.TrimSpace(r.stderr))
	sameTree(t, "after the kill", exportSums(t, env, id), want)
	var snaps struct {
		Snapshots []struct{ Name string } `json:"snapshots"`
	}
	mustWS(t, env, &snaps, "snapshot", "list", id)
	has := false
	for _, s := range snaps.Snapshots {
		has = has || s.Name == "s1"
	}
	if r.code == 0 && !has {
		t.Fatal("snapshot create succeeded but s1 is not listed")
	}
	wsExec(t, env, id, "sh -c 'rm -rf big; echo changed > a.txt'")
	if has {
		mustWS(t, env, nil, "reset", id, "--snapshot", "s1")
		sameTree(t, "after reset to the snapshot taken during the kill", exportSums(t, env, id), want)
	}
}

// TestLayersKillDuringUndo kills QEMU while an undo boots the guest on the
// restored layer: /workspace is then either the checkpoint's tree or the
// tree before the undo, exactly, never a mix.
func TestLayersKillDuringUndo(t *testing.T) {
	env, id, seed := checkpointedWorkspace(t)
	wsExec(t, env, id, "sh -c 'echo one > one.txt'")
	n, _ := lastCheckpoint(t, env, id)
	wsExec(t, env, id, "sh -c 'rm -rf /workspace/* && echo two > two.txt'")
	atCheckpoint := treeSums(t, seed)
	before := exportSums(t, env, id)
	oldPid := findPids(t, id)["vmm"]
	done := make(chan result, 1)
	go func() { done <- ws(t, env, nil, "undo", id, "--to", strconv.Itoa(n)) }()
	// Kill the QEMU the undo starts on the restored layer.
	killVMMWhen(t, id, func() bool { p := findPids(t, id)["vmm"]; return p != 0 && p != oldPid })
	r := <-done
	t.Logf("undo after the kill: exit %d %s", r.code, strings.TrimSpace(r.stderr))
	got := exportSums(t, env, id)
	if len(got) == len(before) && got["two.txt"] != "" {
		sameTree(t, "after the killed undo (not applied)", got, before)
	} else {
		sameTree(t, "after the killed undo (applied)", got, atCheckpoint)
	}
	// Either way the workspace keeps working and keeps its history.
	wsExec(t, env, id, "sh -c 'echo three > three.txt'")
	mustWS(t, env, nil, "undo", id)
	if m := wsExec(t, env, id, "ls", "/workspace"); strings.Contains(m["stdout"].(string), "three.txt") {
		t.Fatalf("undo after the kill left three.txt: %v", m)
	}
}
