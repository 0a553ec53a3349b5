package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	sdk "github.com/pyro-mcp/pyro"
)

// Names, labels, list, update, stop/start, plain shell reads and --id-only,
// through the CLI, the Go SDK and MCP (the Python SDK: python/tests/
// test_e2e_names.py). Each workspace is booted twice (create, start).

// supervisorAlive reports whether any supervisor of a workspace under home
// still runs (a stopped workspace must have none, nor a QEMU).
func supervisorAlive(home, id string) bool {
	b, err := os.ReadFile(filepath.Join(home, "workspaces", id, "supervisor.pid"))
	if err != nil {
		return false
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	_, err = os.Stat("/proc/" + strconv.Itoa(pid))
	return pid > 0 && err == nil
}

// requireStoppedCostsNothing: no QEMU and no supervisor of home remain.
func requireStoppedCostsNothing(t *testing.T, home, id string) {
	t.Helper()
	if q := qemuProcessesFor(home); len(q) > 0 || supervisorAlive(home, id) {
		t.Fatalf("a stopped workspace still runs: qemu %v, supervisor alive %v", q, supervisorAlive(home, id))
	}
}

func TestWorkspaceNamesCLI(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)

	r := pyro(t, env, "workspace", "create", "--name", "api", "--label", "team=infra", "--id-only", baseEnv)
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || !regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(id) || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("create --id-only: exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	t.Cleanup(func() { ws(t, env, nil, "delete", id) })

	// Bad input: a taken name, a label without '=': clear errors, nothing created.
	if r := ws(t, env, nil, "create", "--name", "api", baseEnv); r.code != 4 || !strings.Contains(r.stderr, `"api" is taken by workspace `+id) {
		t.Fatalf("create with a taken name: exit %d %s", r.code, r.stderr)
	}
	if r := ws(t, env, nil, "create", "--label", "team", baseEnv); r.code != 2 || !strings.Contains(r.stderr, "has no '='") {
		t.Fatalf("label without '=': exit %d %s", r.code, r.stderr)
	}
	var list struct {
		Workspaces []struct {
			WorkspaceID    string            `json:"workspace_id"`
			Name           string            `json:"name"`
			Labels         map[string]string `json:"labels"`
			State          string            `json:"state"`
			CreatedAt      time.Time         `json:"created_at"`
			LastActivityAt time.Time         `json:"last_activity_at"`
		} `json:"workspaces"`
		Count int `json:"count"`
	}
	var created struct {
		WorkspaceSeed struct {
			OriginKind string `json:"origin_kind"`
		} `json:"workspace_seed"`
	}
	mustWS(t, env, &created, "status", "api")
	if created.WorkspaceSeed.OriginKind != "empty" {
		t.Fatalf("seed origin of an unseeded workspace: %+v", created)
	}
	mustWS(t, env, &list, "list")
	if list.Count != 1 || list.Workspaces[0].WorkspaceID != id || list.Workspaces[0].Name != "api" || list.Workspaces[0].Labels["team"] != "infra" {
		t.Fatalf("list after refused creates: %+v", list)
	}

	// The name works where the id does; results carry the id.
	ex := wsExec(t, env, "api", "sh", "-c", "echo kept > /workspace/f")
	if num(ex["exit_code"]) != 0 || ex["workspace_id"] != id {
		t.Fatalf("exec by name: %v", ex)
	}
	mustWS(t, env, &list, "list", "--label", "team=infra")
	if list.Count != 1 || !list.Workspaces[0].LastActivityAt.After(list.Workspaces[0].CreatedAt) {
		t.Fatalf("list --label after exec: %+v", list)
	}
	mustWS(t, env, &list, "list", "--label", "team=web")
	if list.Count != 0 {
		t.Fatalf("label filter: %+v", list)
	}
	var st struct {
		WorkspaceID string            `json:"workspace_id"`
		Name        string            `json:"name"`
		Labels      map[string]string `json:"labels"`
		State       string            `json:"state"`
	}
	mustWS(t, env, &st, "update", "api", "--name", "api2", "--label", "stage=dev", "--clear-label", "team")
	if st.WorkspaceID != id || st.Name != "api2" || len(st.Labels) != 1 || st.Labels["stage"] != "dev" {
		t.Fatalf("update: %+v", st)
	}
	if r := ws(t, env, nil, "status", "api"); r.code != 3 {
		t.Fatalf("old name after rename: exit %d %s", r.code, r.stderr)
	}

	// A shell for chat: --id-only, then a plain read that waits for quiet.
	r = pyro(t, env, "workspace", "shell", "open", "api2", "--id-only")
	sid := strings.TrimSpace(r.stdout)
	if r.code != 0 || sid == "" || strings.Contains(sid, "\n") || strings.Contains(sid, "{") {
		t.Fatalf("shell open --id-only: exit %d %q %s", r.code, r.stdout, r.stderr)
	}
	mustWS(t, env, nil, "shell", "write", "api2", sid, "--input",
		`printf '\033[1;31mRED\033[0m 10%%\r\033[1;31mRED\033[0m 100%%\n'; sleep 0.5; printf 'ab\bc-done\n'`)
	var read struct {
		Output string `json:"output"`
	}
	mustWS(t, env, &read, "shell", "read", "api2", sid, "--plain", "--wait-for-idle-ms", "3000")
	if !strings.Contains(read.Output, "RED 100%\n") || !strings.Contains(read.Output, "ac-done") || strings.ContainsAny(read.Output, "\x1b\r\b") {
		t.Fatalf("plain read after idle: %q", read.Output)
	}

	// Stop: flushed, nothing runs, commands refuse without booting it.
	mustWS(t, env, &st, "stop", "api2")
	if st.State != "stopped" {
		t.Fatalf("stop: %+v", st)
	}
	requireStoppedCostsNothing(t, home, id)
	if r := ws(t, env, nil, "stop", "api2"); r.code != 5 || !strings.Contains(r.stderr, "already stopped") {
		t.Fatalf("stopping a stopped workspace: exit %d %s", r.code, r.stderr)
	}
	if r := ws(t, env, nil, "exec", "api2", "--", "true"); r.code != 5 || !strings.Contains(r.stderr, "pyro workspace start "+id) {
		t.Fatalf("exec on a stopped workspace: exit %d %s", r.code, r.stderr)
	}
	requireStoppedCostsNothing(t, home, id)
	mustWS(t, env, &st, "status", "api2")
	if st.State != "stopped" {
		t.Fatalf("status of a stopped workspace: %+v", st)
	}
	mustWS(t, env, &st, "start", "api2")
	if st.State != "running" {
		t.Fatalf("start: %+v", st)
	}
	if ex := wsExec(t, env, "api2", "cat", "/workspace/f"); ex["stdout"] != "kept\n" {
		t.Fatalf("disk after stop/start: %v", ex)
	}
}

func TestWorkspaceNamesSDK(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	c, ctx := sdkClient(t)
	w, err := c.CreateWorkspace(ctx, sdk.CreateWorkspaceOptions{Environment: baseEnv, Name: "sdk-ws", Labels: map[string]string{"who": "go"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.DeleteWorkspace(ctx, w.WorkspaceID)
	if w.Name != "sdk-ws" || w.Labels["who"] != "go" {
		t.Fatalf("create: %+v", w)
	}
	if _, err := c.CreateWorkspace(ctx, sdk.CreateWorkspaceOptions{Environment: baseEnv, Name: "sdk-ws"}); !errors.Is(err, sdk.ErrAlreadyExists) {
		t.Fatalf("taken name: %v", err)
	}
	list, err := c.ListWorkspaces(ctx, &sdk.ListWorkspacesOptions{Labels: map[string]string{"who": "go"}})
	if err != nil || len(list) != 1 || list[0].WorkspaceID != w.WorkspaceID {
		t.Fatalf("list: %+v %v", list, err)
	}
	if w, err = c.UpdateWorkspace(ctx, "sdk-ws", sdk.UpdateWorkspaceOptions{Labels: map[string]string{"stage": "x"}}); err != nil || len(w.Labels) != 2 {
		t.Fatalf("update: %+v %v", w, err)
	}
	sh, err := c.OpenShell(ctx, "sdk-ws", nil)
	if err != nil || sh.WorkspaceID != w.WorkspaceID {
		t.Fatalf("open shell by name: %+v %v", sh, err)
	}
	if _, err := c.WriteShell(ctx, "sdk-ws", sh.ShellID, `printf 'x\033[32my\033[0m\rZ\n'`, nil); err != nil {
		t.Fatal(err)
	}
	r, err := c.ReadShell(ctx, "sdk-ws", sh.ShellID, &sdk.ReadShellOptions{Plain: true, WaitForIdleMS: 1000})
	if err != nil || !strings.Contains(r.Output, "Zy\n") || strings.ContainsAny(r.Output, "\x1b\r") {
		t.Fatalf("plain read: %q %v", r.Output, err)
	}
	if w, err = c.StopWorkspace(ctx, "sdk-ws"); err != nil || w.State != "stopped" {
		t.Fatalf("stop: %+v %v", w, err)
	}
	if _, err := c.StopWorkspace(ctx, "sdk-ws"); !errors.Is(err, sdk.ErrFailedPrecondition) {
		t.Fatalf("second stop: %v", err)
	}
	if _, err := c.ExecWorkspace(ctx, "sdk-ws", sdk.ExecOptions{Command: []string{"true"}}); !errors.Is(err, sdk.ErrFailedPrecondition) ||
		!strings.Contains(err.Error(), "workspace start") {
		t.Fatalf("exec on a stopped workspace: %v", err)
	}
	if w, err = c.StartWorkspace(ctx, "sdk-ws"); err != nil || w.State != "running" {
		t.Fatalf("start: %+v %v", w, err)
	}
	if res, err := c.ExecWorkspace(ctx, "sdk-ws", sdk.ExecOptions{Command: []string{"echo back"}}); err != nil || res.Stdout != "back\n" {
		t.Fatalf("exec after start: %+v %v", res, err)
	}
}

func TestWorkspaceNamesMCP(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := &mcpSession{t: t, ctx: ctx, cs: mcpClientWith(t, env, []string{"--profile", "workspace-full"}, nil, nil)}

	// Profiles over the real binary: the default is exactly the contract.
	for profile, check := range map[string]func([]string) bool{
		"":       func(n []string) bool { return len(n) == 32 && !slices.Contains(n, "workspace_list") },
		"vm-run": func(n []string) bool { return slices.Equal(n, []string{"vm_run"}) },
		"workspace-core": func(n []string) bool {
			return slices.Contains(n, "workspace_list") && !slices.Contains(n, "shell_open")
		},
		"workspace-full": func(n []string) bool { return len(n) > 32 && slices.Contains(n, "workspace_stop") },
	} {
		var flags []string
		if profile != "" {
			flags = []string{"--profile", profile}
		}
		cs := mcpClientWith(t, env, flags, nil, nil)
		res, err := cs.ListTools(s.ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, tl := range res.Tools {
			names = append(names, tl.Name)
		}
		if !check(names) {
			t.Errorf("profile %q lists %v", profile, names)
		}
		_ = cs.Close()
	}

	w := s.must("workspace_create", map[string]any{"environment": baseEnv, "name": "mcp-ws", "labels": map[string]any{"via": "mcp"}})
	id, _ := w["workspace_id"].(string)
	defer s.call("workspace_delete", map[string]any{"workspace_id": id})
	if w["name"] != "mcp-ws" {
		t.Fatalf("workspace_create: %v", w)
	}
	s.mustFail("workspace_create", map[string]any{"environment": baseEnv, "name": "mcp-ws"}, "already_exists")
	l := s.must("workspace_list", map[string]any{"labels": map[string]any{"via": "mcp"}})
	if num(l["count"]) != 1 {
		t.Fatalf("workspace_list: %v", l)
	}
	if ex := s.must("workspace_exec", map[string]any{"workspace_id": "mcp-ws", "command": "echo hi > f"}); ex["workspace_id"] != id {
		t.Fatalf("exec by name: %v", ex)
	}
	if u := s.must("workspace_update", map[string]any{"workspace_id": "mcp-ws", "clear_labels": []any{"via"}}); len(u["labels"].(map[string]any)) != 0 {
		t.Fatalf("workspace_update: %v", u)
	}
	sh := s.must("shell_open", map[string]any{"workspace_id": "mcp-ws"})
	sid, _ := sh["shell_id"].(string)
	s.must("shell_write", map[string]any{"workspace_id": "mcp-ws", "shell_id": sid, "input": `printf '\033[7mA\033[0mB\r\nC\n'`})
	rd := s.must("shell_read", map[string]any{"workspace_id": "mcp-ws", "shell_id": sid, "plain": true, "wait_for_idle_ms": 1000})
	if out, _ := rd["output"].(string); !strings.Contains(out, "AB\nC\n") || strings.ContainsAny(out, "\x1b\r") {
		t.Fatalf("plain shell_read: %q", out)
	}
	if st := s.must("workspace_stop", map[string]any{"workspace_id": "mcp-ws"}); st["state"] != "stopped" {
		t.Fatalf("workspace_stop: %v", st)
	}
	requireStoppedCostsNothing(t, home, id)
	s.mustFail("workspace_stop", map[string]any{"workspace_id": "mcp-ws"}, "failed_precondition")
	if text := s.mustFail("workspace_exec", map[string]any{"workspace_id": "mcp-ws", "command": "true"}, "failed_precondition"); !strings.Contains(text, "workspace start") {
		t.Fatalf("exec on stopped: %s", text)
	}
	if st := s.must("workspace_start", map[string]any{"workspace_id": "mcp-ws"}); st["state"] != "running" {
		t.Fatalf("workspace_start: %v", st)
	}
	if ex := s.must("workspace_exec", map[string]any{"workspace_id": id, "command": "cat f"}); ex["stdout"] != "hi\n" {
		b, _ := json.Marshal(ex)
		t.Fatalf("after start: %s", b)
	}
}

// TestWorkspaceProjectSeed: `mcp serve --project-path DIR` seeds a
// workspace_create without seed_path with the checkout's git-tracked files
// only (no .git, no untracked or ignored file, a symlink stays a link), and
// workspace_seed says where content came from (project_path,
// manual_seed_path, empty).
func TestWorkspaceProjectSeed(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	repo := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q")
	writeTree(t, repo, map[string]string{"main.py": "print('hi')\n", "pkg/util.py": "X = 1\n", ".gitignore": ".env\n"})
	if err := os.Symlink("/etc/shadow", filepath.Join(repo, "shadow-link")); err != nil {
		t.Fatal(err)
	}
	git("add", "-A")
	git("commit", "-qm", "init")
	writeTree(t, repo, map[string]string{".env": "TOKEN=never-copied\n", "scratch.txt": "untracked\n"})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := &mcpSession{t: t, ctx: ctx, cs: mcpClientWith(t, env, []string{"--project-path", filepath.Join(repo, "pkg")}, []string{filepath.Dir(t.TempDir())}, nil)}
	w := s.must("workspace_create", map[string]any{"environment": baseEnv})
	id, _ := w["workspace_id"].(string)
	defer s.call("workspace_delete", map[string]any{"workspace_id": id})
	sd, _ := w["workspace_seed"].(map[string]any)
	if sd["origin_kind"] != "project_path" || sd["origin_ref"] != repo || num(sd["file_count"]) != 4 {
		t.Fatalf("project seed: %v", sd)
	}
	ex := s.must("workspace_exec", map[string]any{"workspace_id": id, "command": "ls -A /workspace | sort | tr '\\n' ' '; readlink /workspace/shadow-link; cat /workspace/pkg/util.py"})
	if ex["stdout"] != ".gitignore main.py pkg shadow-link /etc/shadow\nX = 1\n" {
		t.Fatalf("project files in the guest: %q %v", ex["stdout"], ex["stderr"])
	}
	// A seed_path wins over the project, and says so.
	seed := t.TempDir()
	writeTree(t, seed, map[string]string{"only.txt": "manual\n"})
	w2 := s.must("workspace_create", map[string]any{"environment": baseEnv, "seed_path": seed})
	defer s.call("workspace_delete", map[string]any{"workspace_id": w2["workspace_id"]})
	if sd, _ := w2["workspace_seed"].(map[string]any); sd["origin_kind"] != "manual_seed_path" || sd["origin_ref"] != seed || num(sd["file_count"]) != 1 {
		t.Fatalf("manual seed: %v", sd)
	}
}

// TestHostDoctor: the real binary's `host doctor` starts the MCP server as
// a host would and sees it registered with a (fake) claude on PATH.
func TestHostDoctor(t *testing.T) {
	requireE2E(t)
	_, env := isolatedHome(t)
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "claude"), []byte("#!/bin/sh\necho 'pyro: pyro mcp serve - connected'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	env = append(env, "PATH="+bin+":/usr/bin:/bin")
	var rep struct {
		Server struct {
			Starts    bool `json:"starts"`
			ToolCount int  `json:"tool_count"`
		} `json:"server"`
		Hosts []struct {
			Host       string `json:"host"`
			Registered bool   `json:"registered"`
		} `json:"hosts"`
		OK bool `json:"ok"`
	}
	r := pyro(t, env, "host", "doctor", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 0 || !rep.OK || !rep.Server.Starts || rep.Server.ToolCount <= 32 {
		t.Fatalf("host doctor: exit %d %v %s %s", r.code, err, r.stdout, r.stderr)
	}
	if len(rep.Hosts) != 2 || rep.Hosts[0].Host != "claude-code" || !rep.Hosts[0].Registered || rep.Hosts[1].Registered {
		t.Fatalf("hosts: %+v", rep.Hosts)
	}
}
