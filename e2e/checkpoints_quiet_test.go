package e2e

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLayersQuietCheckpoints: checkpoints taken from an exec's quiet report
// (no guest round trip). Commands that write nothing add no layer to the
// chain, and undo across them is exact; a shell's write between two
// commands (the report is then stale and the guest refuses it) and a
// process a command left behind are both in the next checkpoint.
func TestLayersQuietCheckpoints(t *testing.T) {
	env, id, _ := checkpointedWorkspace(t)
	home := homeOf(env)
	layers := func() int { return chainLayers(t, filepath.Join(home, "workspaces", id)) }
	wsExec(t, env, id, "sh -c 'echo one > one.txt'")
	wsExec(t, env, id, "sh -c 'echo two >> one.txt'")
	// The checkpoint before this one freezes what `echo two` wrote.
	wsExec(t, env, id, "true")
	before := layers()
	_, count := lastCheckpoint(t, env, id)
	for i := 0; i < 5; i++ {
		if m := wsExec(t, env, id, "cat", "one.txt"); m["stdout"] != "one\ntwo\n" {
			t.Fatalf("cat: %v", m)
		}
	}
	if got := layers(); got != before {
		t.Errorf("5 commands that write nothing took the chain from %d to %d layers", before, got)
	}
	last, count2 := lastCheckpoint(t, env, id)
	if count2 != count+5 {
		t.Fatalf("%d checkpoints after 5 more commands, had %d", count2, count)
	}

	// A shell writes between two commands: the checkpoint before the
	// second one holds the shell's file.
	var sh struct {
		ShellID string `json:"shell_id"`
	}
	mustWS(t, env, &sh, "shell", "open", id)
	// No exec until the next command: its checkpoint is the one that
	// would come from the (now stale) quiet report.
	mustWS(t, env, nil, "shell", "write", id, sh.ShellID, "--input", "echo from-shell > /workspace/shell.txt; echo written-$((40+2))")
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := ws(t, env, nil, "shell", "read", id, sh.ShellID, "--plain", "--wait-for-idle-ms", "300")
		if strings.Contains(r.stdout, "written-42") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the shell never wrote shell.txt: %s", r.stdout)
		}
	}
	mustWS(t, env, nil, "shell", "close", id, sh.ShellID)
	wsExec(t, env, id, "sh -c 'rm shell.txt one.txt'")
	rmN, _ := lastCheckpoint(t, env, id)
	t.Logf("checkpoint before the command after the shell: %d (last before the shell %d)", rmN, last)

	// A command leaves a process that writes after it returned.
	wsExec(t, env, id, "sh -c '(sleep 2; echo late > late.txt) >/dev/null 2>&1 </dev/null &'")
	time.Sleep(4 * time.Second)
	wsExec(t, env, id, "sh -c 'rm late.txt'")
	lateN, _ := lastCheckpoint(t, env, id)

	mustWS(t, env, nil, "undo", id, "--to", strconv.Itoa(lateN))
	if m := wsExec(t, env, id, "cat", "late.txt"); m["stdout"] != "late\n" {
		t.Fatalf("undo to before `rm late.txt`: %v", m)
	}
	mustWS(t, env, nil, "undo", id, "--to", strconv.Itoa(rmN))
	if m := wsExec(t, env, id, "cat", "shell.txt", "one.txt"); m["stdout"] != "from-shell\none\ntwo\n" {
		t.Fatalf("undo to before `rm shell.txt one.txt`: %v", m)
	}
	// Undo to a checkpoint between the commands that wrote nothing.
	mustWS(t, env, nil, "undo", id, "--to", strconv.Itoa(last-2))
	if m := wsExec(t, env, id, "ls", "/workspace"); strings.Contains(m["stdout"].(string), "shell.txt") {
		t.Fatalf("undo to %d: %v", last-2, m)
	}
	if m := wsExec(t, env, id, "cat", "one.txt"); m["stdout"] != "one\ntwo\n" {
		t.Fatalf("undo to %d: %v", last-2, m)
	}
}
