package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// mcptsDir holds the Node client (client.mjs) and its pinned dependency on
// the official TypeScript MCP SDK; node_modules is installed on demand and
// never committed.
const mcptsDir = "mcpts"

// npmNetworkError matches npm's messages for an unreachable registry.
var npmNetworkError = regexp.MustCompile(`(?i)ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|network|socket hang up|request to https?://\S+ failed`)

// ensureNodeClient skips the test when node or npm is missing (or node is
// too old for the SDK) and installs the client's dependencies with
// `npm ci` when node_modules lacks the pinned SDK. A registry that cannot be
// reached skips the test, saying so; any other npm failure fails it.
func ensureNodeClient(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: the TypeScript MCP client test needs node >= 18 and npm (apt-get install nodejs npm)")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm is not installed: the TypeScript MCP client test needs node >= 18 and npm (apt-get install nodejs npm)")
	}
	v, err := exec.Command(node, "--version").Output()
	if err != nil {
		t.Skipf("node --version: %v", err)
	}
	major, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(strings.TrimSpace(string(v)), "v"), ".", 2)[0])
	if major < 18 {
		t.Skipf("node %s is too old for @modelcontextprotocol/sdk (needs >= 18)", strings.TrimSpace(string(v)))
	}

	dir, err := filepath.Abs(mcptsDir)
	if err != nil {
		t.Fatal(err)
	}
	var pkg struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "package.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &pkg); err != nil {
		t.Fatalf("package.json: %v", err)
	}
	want := pkg.Dependencies["@modelcontextprotocol/sdk"]
	var installed struct {
		Version string `json:"version"`
	}
	if b, err := os.ReadFile(filepath.Join(dir, "node_modules", "@modelcontextprotocol", "sdk", "package.json")); err == nil {
		_ = json.Unmarshal(b, &installed)
	}
	if installed.Version != "" && installed.Version == want {
		return node
	}

	args := []string{"ci", "--no-audit", "--no-fund", "--loglevel=error"}
	if _, err := os.Stat(filepath.Join(dir, "package-lock.json")); err != nil {
		args[0] = "install"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		t.Skipf("npm %s in e2e/%s did not finish in 5 minutes (npm registry unreachable or too slow?); skipping the TypeScript MCP client test\n%s",
			args[0], mcptsDir, out.String())
	case err != nil && npmNetworkError.MatchString(out.String()):
		t.Skipf("npm registry unreachable: npm %s in e2e/%s failed: %v; skipping the TypeScript MCP client test\n%s",
			args[0], mcptsDir, err, out.String())
	case err != nil:
		t.Fatalf("npm %s in e2e/%s: %v\n%s", args[0], mcptsDir, err, out.String())
	}
	t.Logf("npm %s took %s", args[0], time.Since(start).Round(time.Millisecond))
	return node
}

// TestMCPTypeScriptClient drives `pyro mcp serve` with the official
// TypeScript MCP SDK client (e2e/mcpts/client.mjs): tools/list, then one
// vm_run whose command fails with exit code 3.
func TestMCPTypeScriptClient(t *testing.T) {
	requireE2E(t)
	node := ensureNodeClient(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)

	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "client.mjs", pyroBin)
	cmd.Dir = mcptsDir
	cmd.Env = append(os.Environ(), append(env, "PYRO_BIN="+pyroBin, "PYRO_TS_ENV="+baseEnv)...)
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if stderr.Len() > 0 {
		t.Logf("client.mjs stderr:\n%s", stderr.String())
	}
	if err != nil {
		t.Fatalf("node client.mjs: %v\nstdout: %s", err, stdout.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var sum struct {
		Server      string `json:"server"`
		Tools       int    `json:"tools"`
		ExitCode    *int   `json:"exit_code"`
		Stdout      string `json:"stdout"`
		Stderr      string `json:"stderr"`
		Environment string `json:"environment"`
		Text        string `json:"text"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
		t.Fatalf("client.mjs summary is not JSON: %v\nstdout: %s", err, stdout.String())
	}
	t.Logf("summary: %s", lines[len(lines)-1])
	if sum.Tools != 32 {
		t.Errorf("tools/list: %d tools, want 32", sum.Tools)
	}
	if sum.ExitCode == nil || *sum.ExitCode != 3 || sum.Stdout != "ts-hi\n" {
		t.Errorf("vm_run: exit_code %v stdout %q, want 3 and %q", sum.ExitCode, sum.Stdout, "ts-hi\n")
	}
	if sum.Environment != baseEnv {
		t.Errorf("vm_run environment: %q", sum.Environment)
	}
	if !strings.Contains(sum.Text, "exit_code: 3") || !strings.Contains(sum.Text, "ts-hi") {
		t.Errorf("vm_run text: %q", sum.Text)
	}
	if sum.Server == "" {
		t.Errorf("no server name in the initialize result")
	}
	assertNoLeftovers(t, home)
}
