package e2e

import (
	"context"
	"encoding/base64"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	sdk "github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// TestWorkspaceFiles drives file list/read/write and patch apply through
// the CLI, the Go SDK and MCP on one workspace (one boot), with the bad
// inputs of #16: paths outside /workspace, a symlink out, a directory read
// as a file, a binary file as text, --max-bytes 0, a patch that does not
// apply (nothing changed, the failing hunk named).
func TestWorkspaceFiles(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	seed := t.TempDir()
	writeTree(t, seed, map[string]string{"src/app.py": "def main():\n    print('hello')\n", "README": "one\ntwo\nthree\n"})
	writeTree(t, seed, map[string]string{"data.bin": "\x00\x01\x02PNG\xff"})
	var w wsStatus
	mustWS(t, env, &w, "create", "--seed-path", seed, baseEnv)
	id := w.WorkspaceID
	defer ws(t, env, nil, "delete", id)

	// --- CLI ---
	if got := listing(t, env, "file", "list", id, "--recursive"); got != "/workspace/README:file /workspace/data.bin:file /workspace/src:dir /workspace/src/app.py:file" {
		t.Fatalf("file list: %s", got)
	}
	var f map[string]any
	mustWS(t, env, &f, "file", "read", id, "src/app.py")
	if f["content"] != "def main():\n    print('hello')\n" || f["truncated"] != false || f["binary"] != false {
		t.Fatalf("file read: %v", f)
	}
	if r := pyro(t, env, "workspace", "file", "read", id, "README", "--max-bytes", "4", "--content-only"); r.code != 0 || r.stdout != "one\n" {
		t.Fatalf("--content-only: %d %q %s", r.code, r.stdout, r.stderr)
	}
	mustWS(t, env, &f, "file", "read", id, "data.bin", "--base64")
	if b, _ := base64.StdEncoding.DecodeString(f["content_base64"].(string)); string(b) != "\x00\x01\x02PNG\xff" || f["binary"] != true {
		t.Fatalf("base64 read: %v", f)
	}
	mustWS(t, env, &f, "file", "write", id, "notes/todo.md", "--text", "- fix it\n")
	if f["created"] != true || f["changed"] != true || f["bytes_written"] != float64(9) {
		t.Fatalf("file write: %v", f)
	}
	mustWS(t, env, &f, "file", "write", id, "notes/todo.md", "--text", "- fix it\n")
	if f["changed"] != false {
		t.Fatalf("rewrite with the same text: %v", f)
	}
	wsExec(t, env, id, "ln", "-s", "/etc/passwd", "/workspace/pw")
	patch := "diff --git a/README b/README\n--- a/README\n+++ b/README\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n" +
		"--- /dev/null\n+++ b/src/new.py\n@@ -0,0 +1 @@\n+x = 1\n"
	mustWS(t, env, &f, "patch", "apply", id, "--patch", patch)
	if f["changed"] != true || f["file_count"] != float64(2) {
		t.Fatalf("patch apply: %v", f)
	}
	if m := wsExec(t, env, id, "cat", "README", "src/new.py"); m["stdout"] != "one\nTWO\nthree\nx = 1\n" {
		t.Fatalf("after patch: %v", m)
	}

	bad := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"file", "read", id, "../etc/passwd"}, 2, "outside /workspace"},
		{[]string{"file", "read", id, "pw"}, 2, "outside /workspace"}, // symlink out
		{[]string{"file", "read", id, "src"}, 2, "is a directory"},
		{[]string{"file", "read", id, "data.bin"}, 2, "binary"},
		{[]string{"file", "read", id, "README", "--max-bytes", "0"}, 2, "max-bytes"},
		{[]string{"file", "read", id, "nope.txt"}, 3, "does not exist"},
		{[]string{"file", "write", id, "/etc/evil", "--text", "x"}, 2, "outside /workspace"},
		{[]string{"file", "write", id, "pw", "--text", "x"}, 2, "outside /workspace"},
		{[]string{"file", "write", id, "src", "--text", "x"}, 2, "is a directory"},
		{[]string{"file", "list", id, "/"}, 2, "outside /workspace"},
		// The first file's hunk applies, the second's does not: nothing changes.
		{[]string{"patch", "apply", id, "--patch", "--- a/README\n+++ b/README\n@@ -1 +1 @@\n-one\n+ONE\n--- a/src/app.py\n+++ b/src/app.py\n@@ -2 +2 @@\n-    print('bye')\n+    print('x')\n"},
			5, "hunk 1 of src/app.py"},
		{[]string{"patch", "apply", id, "--patch", "--- a/../../etc/passwd\n+++ b/../../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n"}, 2, "outside /workspace"},
		{[]string{"patch", "apply", id, "--patch", "not a patch"}, 2, "no file sections"},
	}
	for _, b := range bad {
		r := ws(t, env, nil, b.args...)
		if r.code != b.code || !strings.Contains(r.stdout+r.stderr, b.want) {
			t.Errorf("%v: exit %d (want %d), %s %s", b.args, r.code, b.code, r.stdout, r.stderr)
		}
	}
	if m := wsExec(t, env, id, "sh", "-c", "cat README src/app.py; ls /etc/evil 2>&1; head -c 4 /etc/passwd"); m["stdout"] != "one\nTWO\nthree\ndef main():\n    print('hello')\nls: cannot access '/etc/evil': No such file or directory\nroot" {
		t.Fatalf("a refused call changed something: %q", m["stdout"])
	}

	// --- summary: commands with exit codes, changes, writes and patches ---
	wsExec(t, env, id, "sh", "-c", "exit 3")
	var sum struct {
		Commands []struct {
			ExitCode int `json:"exit_code"`
		} `json:"commands"`
		CommandCount       int `json:"command_count"`
		FailedCommandCount int `json:"failed_command_count"`
		Changes            []struct{ Path, Status string }
		Events             []struct {
			Kind  string
			Path  string
			Paths []string
		}
		Snapshots []string
	}
	mustWS(t, env, &sum, "summary", id)
	var kinds, changes []string
	for _, e := range sum.Events {
		kinds = append(kinds, e.Kind)
	}
	for _, c := range sum.Changes {
		changes = append(changes, c.Status+" "+c.Path)
	}
	if sum.CommandCount < 3 || sum.FailedCommandCount != 1 || sum.Commands[len(sum.Commands)-1].ExitCode != 3 ||
		strings.Join(kinds, ",") != "file_write,file_write,patch_apply" || len(sum.Events[2].Paths) != 2 ||
		!strings.Contains(strings.Join(changes, ","), "modified README") || !strings.Contains(strings.Join(changes, ","), "added notes/todo.md") ||
		len(sum.Snapshots) == 0 {
		t.Fatalf("summary: %+v", sum)
	}
	if r := pyro(t, env, "workspace", "summary", id); r.code != 0 || !strings.Contains(r.stdout, "1 failed") || !strings.Contains(r.stdout, "patch_apply") {
		t.Fatalf("human summary: %s %s", r.stdout, r.stderr)
	}

	// --- Go SDK (same state dir, same workspace) ---
	c, err := sdk.New(sdk.Options{StateDir: home, Binary: pyroBin})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if l, err := c.ListWorkspaceFiles(ctx, id, "src", false); err != nil || len(l.Entries) != 2 || l.Entries[0].Path != "/workspace/src/app.py" {
		t.Fatalf("ListWorkspaceFiles: %+v %v", l, err)
	}
	if wr, err := c.WriteWorkspaceFile(ctx, id, "sdk.txt", "from go\n"); err != nil || !wr.Created {
		t.Fatalf("WriteWorkspaceFile: %+v %v", wr, err)
	}
	if p, err := c.ApplyWorkspacePatch(ctx, id, "--- sdk.txt\n+++ sdk.txt\n@@ -1 +1 @@\n-from go\n+from the go sdk\n"); err != nil || !p.Changed {
		t.Fatalf("ApplyWorkspacePatch: %+v %v", p, err)
	}
	if rf, err := c.ReadWorkspaceFile(ctx, id, "sdk.txt", nil); err != nil || rf.Content != "from the go sdk\n" || rf.MaxBytes != sdk.DefaultReadMaxBytes {
		t.Fatalf("ReadWorkspaceFile: %+v %v", rf, err)
	}
	if _, err := c.ReadWorkspaceFile(ctx, id, "data.bin", nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("binary as text: %v", err)
	}
	if _, err := c.ApplyWorkspacePatch(ctx, id, "--- sdk.txt\n+++ sdk.txt\n@@ -1 +1 @@\n-from go\n+again\n"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("stale patch: %v", err)
	}

	// --- MCP (workspace-full lists the file tools) ---
	s := &mcpSession{t: t, ctx: ctx, cs: mcpClientWith(t, env, []string{"--profile", "workspace-full"}, []string{filepath.Dir(t.TempDir())}, nil)}
	tools, err := s.cs.ListTools(ctx, &mcp.ListToolsParams{})
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, tl := range tools.Tools {
		have[tl.Name] = true
	}
	for _, n := range []string{"workspace_file_list", "workspace_file_read", "workspace_file_write", "workspace_patch_apply"} {
		if !have[n] {
			t.Fatalf("workspace-full lacks %s", n)
		}
	}
	wid := map[string]any{"workspace_id": id}
	with := func(kv ...any) map[string]any {
		m := map[string]any{"workspace_id": id}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	if l := s.must("workspace_file_list", wid); len(l["entries"].([]any)) < 5 {
		t.Fatalf("workspace_file_list: %v", l)
	}
	if wr := s.must("workspace_file_write", with("path", "mcp.txt", "text", "a\nb\n")); wr["changed"] != true || wr["bytes_written"] != float64(4) {
		t.Fatalf("workspace_file_write: %v", wr)
	}
	if p := s.must("workspace_patch_apply", with("patch", "--- a/mcp.txt\n+++ b/mcp.txt\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n")); p["changed"] != true {
		t.Fatalf("workspace_patch_apply: %v", p)
	}
	if rf := s.must("workspace_file_read", with("path", "mcp.txt", "max_bytes", 3)); rf["content"] != "a\nc" || rf["truncated"] != true {
		t.Fatalf("workspace_file_read: %v", rf)
	}
	s.mustFail("workspace_patch_apply", with("patch", "--- a/mcp.txt\n+++ b/mcp.txt\n@@ -1,2 +1,2 @@\n a\n-b\n+d\n"), "failed_precondition")
	s.mustFail("workspace_file_read", with("path", "/etc/hostname"), "invalid_argument")
	s.mustFail("workspace_file_read", with("path", "data.bin"), "invalid_argument")
	if sm := s.must("workspace_summary", wid); num(sm["command_count"]) < 3 || len(sm["events"].([]any)) < 6 {
		t.Fatalf("workspace_summary: %v", sm)
	}
}

// TestWorkspaceDisk reads a stopped workspace's /workspace from its disk
// images on the host (no boot): list, read, export as ext4; on a running
// workspace each is failed_precondition.
func TestWorkspaceDisk(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	seed := t.TempDir()
	writeTree(t, seed, map[string]string{"base.txt": "from the seed\n", "old/gone.txt": "bye\n"})
	var w wsStatus
	mustWS(t, env, &w, "create", "--seed-path", seed, baseEnv)
	id := w.WorkspaceID
	defer ws(t, env, nil, "delete", id)
	wsExec(t, env, id, "sh", "-c", "echo new > new.txt && rm -r old && mkdir -p d && printf 'x\\000y' > d/bin && ln -s /etc/passwd out")
	if r := ws(t, env, nil, "disk", "list", id); r.code != 5 || !strings.Contains(r.stdout+r.stderr, "workspace stop") {
		t.Fatalf("disk list on a running workspace: %d %s %s", r.code, r.stdout, r.stderr)
	}
	mustWS(t, env, nil, "stop", id)
	if s := listing(t, env, "disk", "list", id, "--recursive"); s != "/workspace/base.txt:file /workspace/d:dir /workspace/d/bin:file /workspace/new.txt:file /workspace/out:symlink" {
		t.Fatalf("disk list: %s", s)
	}
	var f map[string]any
	mustWS(t, env, &f, "disk", "read", id, "new.txt")
	if f["content"] != "new\n" {
		t.Fatalf("disk read: %v", f)
	}
	mustWS(t, env, &f, "disk", "read", id, "base.txt")
	if f["content"] != "from the seed\n" {
		t.Fatalf("disk read of the baseline: %v", f)
	}
	for _, b := range []struct {
		args []string
		code int
	}{
		{[]string{"disk", "read", id, "out"}, 2},
		{[]string{"disk", "read", id, "d/bin"}, 2},
		{[]string{"disk", "read", id, "d"}, 2},
		{[]string{"disk", "read", id, "old/gone.txt"}, 3},
		{[]string{"disk", "read", id, "../etc/passwd"}, 2},
		{[]string{"disk", "read", id, "new.txt", "--max-bytes", "0"}, 2},
	} {
		if r := ws(t, env, nil, b.args...); r.code != b.code {
			t.Errorf("%v: exit %d (want %d) %s %s", b.args, r.code, b.code, r.stdout, r.stderr)
		}
	}
	out := filepath.Join(t.TempDir(), "ws.ext4")
	var ex map[string]any
	mustWS(t, env, &ex, "disk", "export", id, "--output", out)
	if ex["file_count"] != float64(3) {
		t.Fatalf("disk export: %v", ex)
	}
	if b, err := exec.Command("debugfs", "-c", "-R", "cat /new.txt", out).Output(); err != nil || string(b) != "new\n" {
		t.Fatalf("exported image: %q %v", b, err)
	}
	if r := ws(t, env, nil, "disk", "export", id, "--output", out); r.code != 4 {
		t.Fatalf("export over an existing file: %d", r.code)
	}
	// Go SDK and MCP on the same stopped workspace.
	c, err := sdk.New(sdk.Options{StateDir: home, Binary: pyroBin})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if l, err := c.ListWorkspaceDisk(ctx, id, "d", false); err != nil || len(l.Entries) != 1 || l.Entries[0].Path != "/workspace/d/bin" {
		t.Fatalf("ListWorkspaceDisk: %+v %v", l, err)
	}
	if rf, err := c.ReadWorkspaceDisk(ctx, id, "d/bin", &sdk.ReadWorkspaceFileOptions{Base64: true}); err != nil || !rf.Binary || rf.ContentBase64 != "eAB5" {
		t.Fatalf("ReadWorkspaceDisk: %+v %v", rf, err)
	}
	if ex, err := c.ExportWorkspaceDisk(ctx, id, filepath.Join(t.TempDir(), "sdk.ext4"), nil); err != nil || ex.FileCount != 3 {
		t.Fatalf("ExportWorkspaceDisk: %+v %v", ex, err)
	}
	root := t.TempDir()
	s := &mcpSession{t: t, ctx: ctx, cs: mcpClientWith(t, env, []string{"--profile", "workspace-full"}, []string{root}, nil)}
	with := func(kv ...any) map[string]any {
		m := map[string]any{"workspace_id": id}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	if rf := s.must("workspace_disk_read", with("path", "base.txt")); rf["content"] != "from the seed\n" {
		t.Fatalf("workspace_disk_read: %v", rf)
	}
	if l := s.must("workspace_disk_list", with("recursive", true)); len(l["entries"].([]any)) != 5 {
		t.Fatalf("workspace_disk_list: %v", l)
	}
	if ex := s.must("workspace_disk_export", with("output_path", filepath.Join(root, "mcp.ext4"))); ex["file_count"] != float64(3) {
		t.Fatalf("workspace_disk_export: %v", ex)
	}
	s.mustFail("workspace_disk_export", with("output_path", "/tmp/outside-roots.ext4"), "failed_precondition")

	// Reading the disk did not boot it.
	var st wsStatus
	mustWS(t, env, &st, "status", id)
	if st.State != "stopped" {
		t.Fatalf("state after disk tools: %s", st.State)
	}
}

// listing runs `pyro workspace ARGS` (a file or disk list) and returns its
// entries as "path:type", space-separated.
func listing(t *testing.T, env []string, args ...string) string {
	t.Helper()
	var list struct {
		Entries []struct{ Path, Type string } `json:"entries"`
	}
	mustWS(t, env, &list, args...)
	var names []string
	for _, e := range list.Entries {
		names = append(names, e.Path+":"+e.Type)
	}
	return strings.Join(names, " ")
}
