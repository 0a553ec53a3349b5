package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpClient starts `pyro mcp serve` (stdio) as a subprocess with env and
// connects a real MCP client to it. progress receives progress messages.
// The client offers the test's temporary directory as its MCP root, so
// that host paths from t.TempDir() are allowed.
func mcpClient(t *testing.T, env []string, progress func(string)) *mcp.ClientSession {
	t.Helper()
	return mcpClientWith(t, env, nil, []string{filepath.Dir(t.TempDir())}, progress)
}

// mcpClientWith is mcpClient with extra `mcp serve` flags and the client's
// roots (nil: the client offers no roots capability).
func mcpClientWith(t *testing.T, env, flags, roots []string, progress func(string)) *mcp.ClientSession {
	t.Helper()
	if !slices.ContainsFunc(flags, func(f string) bool { return strings.HasPrefix(f, "--project-path") }) {
		// The server runs inside pyro's own checkout: without this, every
		// workspace_create without seed_path would seed pyro's sources.
		flags = append(slices.Clone(flags), "--project-path=")
	}
	cmd := exec.Command(pyroBin, append([]string{"mcp", "serve"}, flags...)...)
	cmd.Env = append(os.Environ(), env...)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	opts := &mcp.ClientOptions{}
	if roots == nil {
		opts.Capabilities = &mcp.ClientCapabilities{}
	}
	if progress != nil {
		opts.ProgressNotificationHandler = func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			progress(req.Params.Message)
		}
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "pyro-e2e", Version: "1"}, opts)
	for _, r := range roots {
		client.AddRoots(&mcp.Root{URI: "file://" + r})
	}
	cs, err := client.Connect(context.Background(), &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connect to pyro mcp serve: %v\nstderr: %s", err, stderr.String())
	}
	t.Cleanup(func() {
		_ = cs.Close()
		if s := stderr.String(); s != "" {
			t.Logf("pyro mcp serve stderr:\n%s", s)
		}
	})
	return cs
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// callTool calls a tool and decodes its structured result into a map.
func callTool(t *testing.T, ctx context.Context, cs *mcp.ClientSession, name string, args map[string]any) (map[string]any, string, bool) {
	t.Helper()
	params := &mcp.CallToolParams{Name: name, Arguments: args}
	res, err := cs.CallTool(ctx, params)
	if err != nil {
		t.Fatalf("%s: protocol error: %v", name, err)
	}
	text := ""
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			text += tc.Text
		}
	}
	out := map[string]any{}
	if res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		_ = json.Unmarshal(b, &out)
	}
	t.Logf("%s %v -> isError=%v\n%s", name, args, res.IsError, text)
	return out, text, res.IsError
}

// mustTool is callTool that fails the test on a tool error.
func mustTool(t *testing.T, ctx context.Context, cs *mcp.ClientSession, name string, args map[string]any) (map[string]any, string) {
	t.Helper()
	out, text, isErr := callTool(t, ctx, cs, name, args)
	if isErr {
		t.Fatalf("%s: tool error: %s", name, text)
	}
	return out, text
}

func TestMCPStdioSession(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	var mu sync.Mutex
	var progress []string
	cs := mcpClient(t, env, func(m string) { mu.Lock(); progress = append(progress, m); mu.Unlock() })
	ctx := context.Background()

	// vm_run, with a progress token: a failing command is a normal result.
	params := &mcp.CallToolParams{Name: "vm_run", Arguments: map[string]any{
		"environment": baseEnv, "command": "echo hello; echo oops >&2; exit 3",
	}}
	params.SetProgressToken("run-1")
	res, err := cs.CallTool(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if res.IsError {
		t.Fatalf("vm_run: tool error: %v", res.Content)
	}
	var run struct {
		ExitCode    int    `json:"exit_code"`
		Stdout      string `json:"stdout"`
		Stderr      string `json:"stderr"`
		VCPUCount   int    `json:"vcpu_count"`
		MemMiB      int    `json:"mem_mib"`
		Environment string `json:"environment"`
	}
	b, _ := json.Marshal(res.StructuredContent)
	if err := json.Unmarshal(b, &run); err != nil {
		t.Fatal(err)
	}
	if run.ExitCode != 3 || run.Stdout != "hello\n" || !strings.Contains(run.Stderr, "oops") {
		t.Fatalf("vm_run result: %+v", run)
	}
	if run.VCPUCount != 1 || run.MemMiB != 1024 || run.Environment != baseEnv {
		t.Errorf("vm_run defaults: %+v", run)
	}
	text := res.Content[0].(*mcp.TextContent).Text
	if !strings.Contains(text, "exit_code: 3") || !strings.Contains(text, "hello") || !strings.Contains(text, "oops") {
		t.Errorf("vm_run text rendering: %q", text)
	}
	// Notifications are handled asynchronously by the client: the last one
	// may land just after the result.
	got := ""
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		got = strings.Join(progress, "\n")
		mu.Unlock()
		if strings.Contains(got, "exit_code 3") {
			break
		}
	}
	if !strings.Contains(got, "booting") || !strings.Contains(got, "stdout: hello") || !strings.Contains(got, "exit_code 3") {
		t.Errorf("progress notifications: %q", got)
	}

	// A workspace session.
	seed := t.TempDir()
	if err := os.WriteFile(filepath.Join(seed, "a.txt"), []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ws, _ := mustTool(t, ctx, cs, "workspace_create", map[string]any{"environment": baseEnv, "seed_path": seed})
	id, _ := ws["workspace_id"].(string)
	if id == "" || ws["state"] != "running" {
		t.Fatalf("workspace_create: %v", ws)
	}
	deleted := false
	defer func() {
		if !deleted {
			callTool(t, ctx, cs, "workspace_delete", map[string]any{"workspace_id": id})
		}
	}()

	ex, _ := mustTool(t, ctx, cs, "workspace_exec", map[string]any{"workspace_id": id, "command": "cat a.txt && echo new > b.txt && pwd"})
	if ex["exit_code"] != float64(0) || ex["stdout"] != "from host\n/workspace\n" {
		t.Fatalf("workspace_exec: %v", ex)
	}
	ex, _ = mustTool(t, ctx, cs, "workspace_exec", map[string]any{"workspace_id": id, "command": "ls /nonexistent"})
	if ex["exit_code"] == float64(0) || !strings.Contains(ex["stderr"].(string), "nonexistent") {
		t.Fatalf("failing workspace_exec: %v", ex)
	}
	diff, _ := mustTool(t, ctx, cs, "workspace_diff", map[string]any{"workspace_id": id})
	if added, _ := diff["added"].([]any); len(added) != 1 || added[0] != "b.txt" {
		t.Fatalf("workspace_diff: %v", diff)
	}

	// An unknown id is a tool error with its category; the next call works.
	_, text, isErr := callTool(t, ctx, cs, "workspace_exec", map[string]any{"workspace_id": "no-such-workspace", "command": "true"})
	if !isErr || !strings.HasPrefix(text, "not_found: ") {
		t.Fatalf("unknown workspace: isError=%v %q", isErr, text)
	}
	_, text, isErr = callTool(t, ctx, cs, "vm_run", map[string]any{"command": "true", "vcpu_count": "lots"})
	if !isErr || !strings.HasPrefix(text, "invalid_argument: ") {
		t.Fatalf("bad argument: isError=%v %q", isErr, text)
	}
	st, _ := mustTool(t, ctx, cs, "workspace_status", map[string]any{"workspace_id": id})
	if st["command_count"] != float64(2) {
		t.Errorf("workspace_status after errors: %v", st)
	}

	del, _ := mustTool(t, ctx, cs, "workspace_delete", map[string]any{"workspace_id": id})
	if del["deleted"] != true {
		t.Fatalf("workspace_delete: %v", del)
	}
	deleted = true
	if ents, _ := os.ReadDir(filepath.Join(home, "workspaces")); len(ents) != 0 {
		t.Errorf("workspaces left: %v", ents)
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Errorf("vm dirs left: %v", left)
	}
}

func TestMCPCancelKillsGuest(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Cancel the call once the guest command is running.
	cs := mcpClient(t, env, func(m string) {
		if strings.Contains(m, "started") {
			cancel()
		}
	})
	params := &mcp.CallToolParams{Name: "vm_run", Arguments: map[string]any{
		"environment": baseEnv, "command": "echo started; sleep 120", "timeout_seconds": 300,
	}}
	params.SetProgressToken(1)
	start := time.Now()
	_, err := cs.CallTool(ctx, params)
	if err == nil {
		t.Fatal("cancelled vm_run returned no error")
	}
	if time.Since(start) > 90*time.Second {
		t.Fatalf("cancel took %s", time.Since(start))
	}
	// The server tears the VM down: no VM directory, no QEMU left.
	deadline := time.Now().Add(30 * time.Second)
	for len(vmDirs(t, home)) > 0 || len(qemuProcessesFor(home)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after cancel: vm dirs %v, qemu pids %v", vmDirs(t, home), qemuProcessesFor(home))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// And the server still works.
	mustTool(t, context.Background(), cs, "vm_list_environments", nil)
}

func TestMCPHTTPToken(t *testing.T) {
	requireE2E(t)
	home, env := isolatedHome(t)

	if r := pyro(t, env, "mcp", "serve", "--http", "0.0.0.0:0"); r.code == 0 || !strings.Contains(r.stderr, "--allow-remote") {
		t.Errorf("non-loopback address: exit %d, stderr %q", r.code, r.stderr)
	}

	const token = "e2e-secret-token"
	cmd := exec.Command(pyroBin, "mcp", "serve", "--http", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), append(env, "PYRO_MCP_TOKEN="+token)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout lockedBuffer
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	lines := bufio.NewScanner(stderr)
	url := ""
	re := regexp.MustCompile(`listening on (http://\S+)`)
	for url == "" && lines.Scan() {
		t.Logf("stderr: %s", lines.Text())
		if strings.Contains(lines.Text(), token) {
			t.Errorf("a token from %s was printed", "PYRO_MCP_TOKEN")
		}
		if m := re.FindStringSubmatch(lines.Text()); m != nil {
			url = m[1]
		}
	}
	if url == "" {
		t.Fatal("no listening line on stderr")
	}
	go io.Copy(io.Discard, stderr)

	// Without or with a wrong token: 401, and nothing runs.
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"vm_run","arguments":{"command":"true"}}}`
	for _, auth := range []string{"", "Bearer wrong", "Basic " + token, token} {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: status %d, want 401", auth, resp.StatusCode)
		}
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Errorf("an unauthorised request created VMs: %v", left)
	}

	// With the token, a real client lists the tools.
	hc := &http.Client{Transport: bearer{token: token}}
	client := mcp.NewClient(&mcp.Implementation{Name: "pyro-e2e-http", Version: "1"}, nil)
	cs, err := client.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: hc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	tools, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(tools.Tools) != 32 {
		t.Errorf("tools/list over HTTP: %d tools", len(tools.Tools))
	}
	out, _ := mustTool(t, context.Background(), cs, "vm_list_environments", nil)
	if envs, _ := out["environments"].([]any); len(envs) < 3 {
		t.Errorf("vm_list_environments over HTTP: %v", out)
	}
	if s := stdout.String(); s != "" {
		t.Errorf("HTTP mode wrote to stdout: %q", s)
	}
}

// bearer adds an Authorization header to every request.
type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

// TestMCPHostPathsConfined: host paths from the model are confined to the
// --allow-path directories (this client offers no roots). /etc is refused
// as a seed and as a secret file, an export outside is refused; beneath
// the allowed directory seed, secret file and export work through the
// real binary.
func TestMCPHostPathsConfined(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	allowed, outside := t.TempDir(), t.TempDir()
	seed := filepath.Join(allowed, "seed")
	if err := os.MkdirAll(seed, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(seed, "a.txt"), []byte("seeded\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(allowed, "token"), []byte("s3cret-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	cs := mcpClientWith(t, env, []string{"--allow-path", allowed}, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	refused := func(tool string, args map[string]any) {
		t.Helper()
		_, text, isErr := callTool(t, ctx, cs, tool, args)
		if !isErr || !strings.HasPrefix(text, "failed_precondition: ") || !strings.Contains(text, "--allow-path") {
			t.Fatalf("%s %v: want a failed_precondition naming --allow-path, got isError=%v %q", tool, args, isErr, text)
		}
	}
	refused("workspace_create", map[string]any{"environment": baseEnv, "seed_path": "/etc"})
	refused("workspace_create", map[string]any{"environment": baseEnv, "seed_path": filepath.Join(allowed, "..", filepath.Base(outside))})
	refused("workspace_create", map[string]any{"environment": baseEnv, "secrets": []any{map[string]any{"name": "TOK", "file_path": "/etc/hostname"}}})

	ws, _ := mustTool(t, ctx, cs, "workspace_create", map[string]any{"environment": baseEnv, "seed_path": seed,
		"secrets": []any{map[string]any{"name": "TOK", "file_path": filepath.Join(allowed, "token")}}})
	id, _ := ws["workspace_id"].(string)
	defer callTool(t, context.Background(), cs, "workspace_delete", map[string]any{"workspace_id": id})
	ex, _ := mustTool(t, ctx, cs, "workspace_exec", map[string]any{"workspace_id": id, "secret_env": map[string]any{"TOK": ""},
		"command": `cat a.txt && test "$TOK" = s3cret-value && echo secret-ok`})
	if ex["stdout"] != "seeded\nsecret-ok\n" {
		t.Fatalf("seed and secret from beneath --allow-path: %v", ex)
	}
	refused("workspace_sync_push", map[string]any{"workspace_id": id, "source_path": "/etc"})
	refused("workspace_export", map[string]any{"workspace_id": id, "path": "a.txt", "output_path": filepath.Join(outside, "a.txt")})
	out := filepath.Join(allowed, "exported.txt")
	exp, _ := mustTool(t, ctx, cs, "workspace_export", map[string]any{"workspace_id": id, "path": "a.txt", "output_path": out})
	if b, err := os.ReadFile(out); err != nil || string(b) != "seeded\n" || exp["output_path"] != out {
		t.Fatalf("export beneath --allow-path: %v %q %v", exp, b, err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("something was written outside: %v", ents)
	}
}
