package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpSession drives one `pyro mcp serve` subprocess and checks every tool
// result it sees: a secret value must never appear in a result's text or
// structured content.
type mcpSession struct {
	t      *testing.T
	ctx    context.Context
	cs     *mcp.ClientSession
	secret string // "" when the session has none
}

// call calls a tool and returns its structured content (decoded into a map),
// its text and whether it is a tool error.
func (s *mcpSession) call(name string, args map[string]any) (map[string]any, string, bool) {
	s.t.Helper()
	res, err := s.cs.CallTool(s.ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		s.t.Fatalf("%s: protocol error: %v", name, err)
	}
	var text strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			text.WriteString(tc.Text)
		}
	}
	raw, _ := json.Marshal(res.StructuredContent)
	out := map[string]any{}
	if res.StructuredContent != nil {
		if err := json.Unmarshal(raw, &out); err != nil {
			s.t.Fatalf("%s: structured content is not an object: %s", name, raw)
		}
	}
	if s.secret != "" {
		all, _ := json.Marshal(res) // content blocks, structured content, meta
		if strings.Contains(text.String(), s.secret) || strings.Contains(string(raw), s.secret) || strings.Contains(string(all), s.secret) {
			s.t.Errorf("%s: the secret value appears in the tool result:\ntext: %s\nstructured: %s", name, text.String(), raw)
		}
	}
	logged := text.String()
	if len(logged) > 1500 {
		logged = logged[:1500] + "…"
	}
	s.t.Logf("%s -> isError=%v\n%s", name, res.IsError, logged)
	return out, text.String(), res.IsError
}

// must is call that fails the test on a tool error.
func (s *mcpSession) must(name string, args map[string]any) map[string]any {
	s.t.Helper()
	out, text, isErr := s.call(name, args)
	if isErr {
		s.t.Fatalf("%s: tool error: %s", name, text)
	}
	return out
}

// mustFail calls a tool that must be a tool error whose text starts with
// category + ": ".
func (s *mcpSession) mustFail(name string, args map[string]any, category string) string {
	s.t.Helper()
	_, text, isErr := s.call(name, args)
	if !isErr || !strings.HasPrefix(text, category+": ") {
		s.t.Fatalf("%s %v: want a %s tool error, got isError=%v %q", name, args, category, isErr, text)
	}
	return text
}

func newMCPSession(t *testing.T, env []string, secret string) *mcpSession {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	return &mcpSession{t: t, ctx: ctx, cs: mcpClient(t, env, nil), secret: secret}
}

// assertNoLeftovers checks that a test's state dir holds no VM and that no
// QEMU process of it is left.
func assertNoLeftovers(t *testing.T, home string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(vmDirs(t, home)) > 0 || len(qemuProcessesFor(home)) > 0 {
		if time.Now().After(deadline) {
			t.Errorf("left behind: vm dirs %v, qemu pids %v", vmDirs(t, home), qemuProcessesFor(home))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func num(v any) int {
	f, _ := v.(float64)
	return int(f)
}

// TestMCPSessionVMLifecycle drives the vm_* tools over stdio: a TTL VM that
// expires and is reaped, a VM that vm_exec deletes, and a stopped then
// deleted VM. One guest runs at a time.
func TestMCPSessionVMLifecycle(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	s := newMCPSession(t, env, "")

	t.Run("ttl and reap", func(t *testing.T) {
		s.t = t
		// The TTL counts from creation, boot included, and a TCG boot takes
		// about 3 s: leave room to see the VM running before it expires.
		const ttl = 10
		v := s.must("vm_create", map[string]any{"environment": baseEnv, "ttl_seconds": ttl})
		id, _ := v["vm_id"].(string)
		if id == "" || v["state"] != "created" || num(v["ttl_seconds"]) != ttl || v["expires_at"] == nil {
			t.Fatalf("vm_create: %v", v)
		}
		if v["environment"] != baseEnv || num(v["vcpu_count"]) != 1 || num(v["mem_mib"]) != 1024 || v["network"] != false {
			t.Errorf("vm_create defaults: %v", v)
		}
		v = s.must("vm_start", map[string]any{"vm_id": id})
		if v["vm_id"] != id || v["state"] != "running" {
			t.Fatalf("vm_start: %v", v)
		}
		v = s.must("vm_status", map[string]any{"vm_id": id})
		if v["state"] != "running" {
			t.Fatalf("vm_status right after vm_start: %v", v)
		}
		n := s.must("vm_network_info", map[string]any{"vm_id": id})
		if n["vm_id"] != id || n["network_enabled"] != false || n["mode"] != "none" {
			t.Errorf("vm_network_info of a VM without network: %v", n)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			v = s.must("vm_status", map[string]any{"vm_id": id})
			if v["state"] == "expired" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("vm_status never said expired: %v", v)
			}
			time.Sleep(500 * time.Millisecond)
		}
		s.mustFail("vm_start", map[string]any{"vm_id": id}, "failed_precondition")
		r := s.must("vm_reap_expired", nil)
		removed, _ := r["removed"].([]any)
		found := false
		for _, x := range removed {
			if m, _ := x.(map[string]any); m["vm_id"] == id && m["deleted"] == true {
				found = true
			}
		}
		if !found || num(r["count"]) != len(removed) || num(r["count"]) < 1 {
			t.Fatalf("vm_reap_expired does not list %s: %v", id, r)
		}
		s.mustFail("vm_status", map[string]any{"vm_id": id}, "not_found")
		if r := s.must("vm_reap_expired", nil); num(r["count"]) != 0 {
			t.Errorf("second vm_reap_expired: %v", r)
		}
	})

	t.Run("exec deletes", func(t *testing.T) {
		s.t = t
		v := s.must("vm_create", map[string]any{"environment": baseEnv})
		id, _ := v["vm_id"].(string)
		if id == "" || v["state"] != "created" {
			t.Fatalf("vm_create: %v", v)
		}
		if v := s.must("vm_status", map[string]any{"vm_id": id}); v["state"] != "created" {
			t.Errorf("vm_status before start: %v", v)
		}
		if v := s.must("vm_start", map[string]any{"vm_id": id}); v["state"] != "running" {
			t.Fatalf("vm_start: %v", v)
		}
		ex := s.must("vm_exec", map[string]any{"vm_id": id, "command": "echo vm-out; echo vm-err >&2; exit 7"})
		if num(ex["exit_code"]) != 7 || ex["stdout"] != "vm-out\n" || ex["stderr"] != "vm-err\n" || ex["timed_out"] != false {
			t.Fatalf("vm_exec: %v", ex)
		}
		s.mustFail("vm_status", map[string]any{"vm_id": id}, "not_found")
		s.mustFail("vm_exec", map[string]any{"vm_id": id, "command": "true"}, "not_found")
	})

	t.Run("stop and delete", func(t *testing.T) {
		s.t = t
		v := s.must("vm_create", map[string]any{"environment": baseEnv, "mem_mib": 512})
		id, _ := v["vm_id"].(string)
		if num(v["mem_mib"]) != 512 {
			t.Errorf("vm_create mem_mib: %v", v)
		}
		if v := s.must("vm_start", map[string]any{"vm_id": id}); v["state"] != "running" {
			t.Fatalf("vm_start: %v", v)
		}
		if v := s.must("vm_stop", map[string]any{"vm_id": id}); v["vm_id"] != id || v["state"] != "stopped" {
			t.Fatalf("vm_stop: %v", v)
		}
		if v := s.must("vm_status", map[string]any{"vm_id": id}); v["state"] != "stopped" {
			t.Fatalf("vm_status after vm_stop: %v", v)
		}
		if v := s.must("vm_stop", map[string]any{"vm_id": id}); v["state"] != "stopped" {
			t.Errorf("vm_stop of a stopped VM: %v", v)
		}
		d := s.must("vm_delete", map[string]any{"vm_id": id})
		if d["vm_id"] != id || d["deleted"] != true || d["prior_state"] != "stopped" {
			t.Fatalf("vm_delete: %v", d)
		}
		s.mustFail("vm_status", map[string]any{"vm_id": id}, "not_found")
		s.mustFail("vm_delete", map[string]any{"vm_id": id}, "not_found")
	})
	s.t = t
	assertNoLeftovers(t, home)
}

// TestMCPSessionWorkspace drives a whole workspace session over stdio:
// seed, secrets, exec, shell, service, snapshots, diff, export, sync, reset,
// logs, status, delete. The secret value must never come back.
func TestMCPSessionWorkspace(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	rb := make([]byte, 16)
	if _, err := rand.Read(rb); err != nil {
		t.Fatal(err)
	}
	secret := "tok" + hex.EncodeToString(rb)
	s := newMCPSession(t, env, secret)

	seed := t.TempDir()
	if err := os.WriteFile(filepath.Join(seed, "a.txt"), []byte("seeded\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ws := s.must("workspace_create", map[string]any{
		"environment": baseEnv, "seed_path": seed,
		"secrets": []any{map[string]any{"name": "TOKEN", "value": secret}},
	})
	id, _ := ws["workspace_id"].(string)
	if id == "" || ws["state"] != "running" || ws["environment"] != baseEnv {
		t.Fatalf("workspace_create: %v", ws)
	}
	deleted := false
	defer func() {
		if !deleted {
			s.call("workspace_delete", map[string]any{"workspace_id": id})
		}
	}()
	if sd, _ := ws["workspace_seed"].(map[string]any); sd["mode"] != "directory" || num(sd["file_count"]) != 1 {
		t.Errorf("workspace_create seed: %v", ws["workspace_seed"])
	}
	if sc, _ := ws["secrets"].([]any); len(sc) != 1 || sc[0].(map[string]any)["name"] != "TOKEN" {
		t.Errorf("workspace_create secrets: %v", ws["secrets"])
	}
	wid := map[string]any{"workspace_id": id}
	with := func(kv ...any) map[string]any {
		m := map[string]any{"workspace_id": id}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	commands := 0

	// exec: seed content, a secret exposed to one call only, redacted.
	ex := s.must("workspace_exec", with("command", "cat a.txt && pwd && echo new > b.txt"))
	commands++
	if num(ex["exit_code"]) != 0 || ex["stdout"] != "seeded\n/workspace\n" || ex["workspace_id"] != id {
		t.Fatalf("workspace_exec: %v", ex)
	}
	ex = s.must("workspace_exec", with("command", "printenv TOKEN", "secret_env", map[string]any{"TOKEN": "TOKEN"}))
	commands++
	if num(ex["exit_code"]) != 0 || !strings.Contains(ex["stdout"].(string), "[REDACTED]") {
		t.Fatalf("workspace_exec printenv TOKEN: want [REDACTED], got %v", ex)
	}
	ex = s.must("workspace_exec", with("command", "printenv TOKEN"))
	commands++
	if num(ex["exit_code"]) == 0 {
		t.Errorf("TOKEN set without secret_env: %v", ex)
	}

	// shell: open with the secret, poll for output, interrupt, close.
	sh := s.must("shell_open", with("secret_env", map[string]any{"TOKEN": ""}))
	shellID, _ := sh["shell_id"].(string)
	if shellID == "" || sh["cwd"] != "/workspace" || num(sh["cols"]) != 120 || num(sh["rows"]) != 30 {
		t.Fatalf("shell_open: %v", sh)
	}
	var cursor int64
	var shellOut strings.Builder
	readUntil := func(marker string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(shellOut.String(), marker) {
			if time.Now().After(deadline) {
				t.Fatalf("shell output never contained %q: %q", marker, shellOut.String())
			}
			r := s.must("shell_read", with("shell_id", shellID, "cursor", cursor))
			if r["shell_id"] != shellID || int64(num(r["cursor"])) != cursor {
				t.Fatalf("shell_read: %v", r)
			}
			shellOut.WriteString(r["output"].(string))
			cursor = int64(num(r["next_cursor"]))
			if r["more"] != true {
				time.Sleep(300 * time.Millisecond)
			}
		}
	}
	w := s.must("shell_write", with("shell_id", shellID, "input", "echo marker-$((6*7)); printenv TOKEN"))
	if num(w["bytes_written"]) == 0 {
		t.Errorf("shell_write: %v", w)
	}
	readUntil("marker-42")
	readUntil("[REDACTED]")
	s.must("shell_write", with("shell_id", shellID, "input", "sleep 1000"))
	time.Sleep(time.Second)
	sig := s.must("shell_signal", with("shell_id", shellID))
	if (sig["signal"] != "SIGINT" && sig["signal"] != "INT") || sig["shell_id"] != shellID {
		t.Errorf("shell_signal default: %v", sig)
	}
	s.must("shell_write", with("shell_id", shellID, "input", "echo after-$((1+1))"))
	readUntil("after-2")
	cl := s.must("shell_close", with("shell_id", shellID))
	if cl["closed"] != true || cl["shell_id"] != shellID {
		t.Errorf("shell_close: %v", cl)
	}

	// service with a file readiness probe; its log would show the secret.
	sv := s.must("service_start", with("service_name", "web",
		"command", "sh -c 'echo svc-up TOKEN=$TOKEN; touch /tmp/ready; sleep 1000'",
		"readiness", map[string]any{"type": "file", "path": "/tmp/ready"},
		"secret_env", map[string]any{"TOKEN": ""}))
	if sv["name"] != "web" || sv["state"] != "running" || sv["ready_at"] == nil || num(sv["pid"]) == 0 || sv["workspace_id"] != id {
		t.Fatalf("service_start: %v", sv)
	}
	list := s.must("service_list", wid)
	if svs, _ := list["services"].([]any); len(svs) != 1 || svs[0].(map[string]any)["name"] != "web" {
		t.Errorf("service_list: %v", list)
	}
	if st := s.must("service_status", with("service_name", "web")); st["state"] != "running" || st["pid"] != sv["pid"] {
		t.Errorf("service_status: %v", st)
	}
	st := s.must("workspace_status", wid)
	if num(st["service_count"]) != 1 || num(st["running_service_count"]) != 1 || num(st["command_count"]) != commands {
		t.Errorf("workspace_status with a running service: %v", st)
	}
	var logs map[string]any
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		logs = s.must("service_logs", with("service_name", "web"))
		if lines, _ := logs["lines"].([]any); len(lines) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if lines, _ := logs["lines"].([]any); len(lines) == 0 || !strings.Contains(lines[0].(string), "svc-up TOKEN=[REDACTED]") {
		t.Errorf("service_logs: want svc-up TOKEN=[REDACTED], got %v", logs)
	}
	stop := s.must("service_stop", with("service_name", "web"))
	if stop["state"] != "stopped" {
		t.Errorf("service_stop: %v", stop)
	}
	if st := s.must("service_status", with("service_name", "web")); st["state"] != "stopped" {
		t.Errorf("service_status after stop: %v", st)
	}
	s.mustFail("service_status", with("service_name", "nope"), "not_found")

	// snapshots
	sn := s.must("snapshot_create", with("snapshot_name", "snap1"))
	if sn["name"] != "snap1" || num(sn["bytes"]) == 0 {
		t.Errorf("snapshot_create: %v", sn)
	}
	snapNames := func() []string {
		l := s.must("snapshot_list", wid)
		var names []string
		arr, _ := l["snapshots"].([]any)
		for _, x := range arr {
			names = append(names, x.(map[string]any)["name"].(string))
		}
		return names
	}
	if names := snapNames(); !slices.Equal(names, []string{"baseline", "snap1"}) {
		t.Errorf("snapshot_list: %v", names)
	}
	if d := s.must("snapshot_delete", with("snapshot_name", "snap1")); d["deleted"] != true || d["snapshot_name"] != "snap1" {
		t.Errorf("snapshot_delete: %v", d)
	}
	if names := snapNames(); !slices.Equal(names, []string{"baseline"}) {
		t.Errorf("snapshot_list after delete: %v", names)
	}
	s.mustFail("snapshot_delete", with("snapshot_name", "baseline"), "failed_precondition")

	// diff, export, sync push
	diff := s.must("workspace_diff", wid)
	if added, _ := diff["added"].([]any); len(added) != 1 || added[0] != "b.txt" {
		t.Errorf("workspace_diff: %v", diff)
	}
	out := filepath.Join(t.TempDir(), "b-export.txt")
	exp := s.must("workspace_export", with("path", "b.txt", "output_path", out))
	if exp["kind"] != "file" || num(exp["file_count"]) != 1 || num(exp["bytes"]) != 4 {
		t.Errorf("workspace_export: %v", exp)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "new\n" {
		t.Errorf("exported file: %q %v", b, err)
	}
	s.mustFail("workspace_export", with("path", "b.txt", "output_path", out), "already_exists")
	push := t.TempDir()
	if err := os.WriteFile(filepath.Join(push, "c.txt"), []byte("pushed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sp := s.must("workspace_sync_push", with("source_path", push))
	if num(sp["file_count"]) != 1 || sp["dest"] != "/workspace" || sp["mode"] != "directory" {
		t.Errorf("workspace_sync_push: %v", sp)
	}
	ex = s.must("workspace_exec", with("command", "cat c.txt"))
	commands++
	if ex["stdout"] != "pushed\n" {
		t.Errorf("pushed file: %v", ex)
	}

	// logs and status before reset
	wl := s.must("workspace_logs", wid)
	entries, _ := wl["entries"].([]any)
	if num(wl["count"]) != commands || len(entries) != commands {
		t.Fatalf("workspace_logs: want %d entries, got %v", commands, wl)
	}
	if e := entries[1].(map[string]any); !strings.Contains(e["stdout"].(string), "[REDACTED]") || num(e["seq"]) != 2 {
		t.Errorf("workspace_logs entry of printenv TOKEN: %v", e)
	}
	st = s.must("workspace_status", wid)
	if num(st["service_count"]) != 1 || num(st["running_service_count"]) != 0 || num(st["command_count"]) != commands || num(st["reset_count"]) != 0 {
		t.Errorf("workspace_status: %v", st)
	}

	// reset to baseline
	rs := s.must("workspace_reset", wid)
	if num(rs["reset_count"]) != 1 || rs["state"] != "running" || rs["last_reset_at"] == nil {
		t.Fatalf("workspace_reset: %v", rs)
	}
	ex = s.must("workspace_exec", with("command", "cat a.txt; ls"))
	if ex["stdout"] != "seeded\na.txt\n" {
		t.Errorf("after reset: %v", ex)
	}
	ex = s.must("workspace_exec", with("command", "printenv TOKEN", "secret_env", map[string]any{"TOKEN": "TOKEN"}))
	if !strings.Contains(ex["stdout"].(string), "[REDACTED]") {
		t.Errorf("secret after reset: %v", ex)
	}
	st = s.must("workspace_status", wid)
	if num(st["reset_count"]) != 1 || num(st["service_count"]) != 0 || num(st["command_count"]) != 2 {
		t.Errorf("workspace_status after reset: %v", st)
	}
	if sc, _ := st["secrets"].([]any); len(sc) != 1 {
		t.Errorf("secrets after reset: %v", st["secrets"])
	}

	d := s.must("workspace_delete", wid)
	if d["deleted"] != true || d["workspace_id"] != id || d["prior_state"] != "running" {
		t.Errorf("workspace_delete: %v", d)
	}
	deleted = true
	s.mustFail("workspace_status", wid, "not_found")
	if ents, _ := os.ReadDir(filepath.Join(home, "workspaces")); len(ents) != 0 {
		t.Errorf("workspaces left: %v", ents)
	}
	assertNoLeftovers(t, home)
}
