package agent

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// The secret set is process-wide: each test sets its own and clears it.
const (
	testSecret  = "s3cr3t-Vq9zK2-xP7"
	splitSecret = "SPLITabcdVALUE"
)

func setTestSecrets(t *testing.T, c *agentapi.Client, values map[string]string) agentapi.SecretsResponse {
	t.Helper()
	res, err := c.SetSecrets(testCtx(t), values)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func noSecret(t *testing.T, what, s string) {
	t.Helper()
	for _, v := range []string{testSecret, splitSecret, base64.StdEncoding.EncodeToString([]byte(testSecret)), hex.EncodeToString([]byte(testSecret))} {
		if strings.Contains(s, v) {
			t.Fatalf("%s leaks a secret form %q: %q", what, v, s)
		}
	}
}

func TestSecretsMaterialised(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pyro-secrets")
	c := newTestClient(t, Options{SecretsDir: dir})
	res := setTestSecrets(t, c, map[string]string{"TOKEN": testSecret, "OTHER": "other-value-1"})
	if strings.Join(res.Names, ",") != "OTHER,TOKEN" || res.Dir != dir {
		t.Fatalf("response %+v", res)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir: %v %v", st.Mode(), err)
	}
	for name, want := range map[string]string{"TOKEN": testSecret, "OTHER": "other-value-1"} {
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != 0o400 {
			t.Fatalf("%s: %v %v", p, st.Mode(), err)
		}
		if b, _ := os.ReadFile(p); string(b) != want {
			t.Fatalf("%s content %q", p, b)
		}
	}
	// Idempotent replacement: OTHER goes away, TOKEN is rewritten.
	if _, err := c.SetSecrets(testCtx(t), map[string]string{"TOKEN": testSecret}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "OTHER")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OTHER still there: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "TOKEN" {
		t.Fatalf("entries %v", ents)
	}
	// Bad names and values are refused without echoing the value.
	_, err = c.SetSecrets(testCtx(t), map[string]string{"1BAD": testSecret})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "1BAD") {
		t.Fatalf("bad name: %v", err)
	}
	noSecret(t, "bad name error", err.Error())
}

func TestSecretsExecRedacted(t *testing.T) {
	dir := t.TempDir()
	c := newTestClient(t, Options{SecretsDir: dir})
	setTestSecrets(t, c, map[string]string{"TOKEN": testSecret, "SPLIT": splitSecret})
	ctx := testCtx(t)

	var streamed strings.Builder
	res, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"printenv", "X"}, SecretEnv: map[string]string{"TOKEN": "X"}},
		func(_ string, p []byte) { streamed.Write(p) })
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Stdout != "[REDACTED]\n" || streamed.String() != "[REDACTED]\n" {
		t.Fatalf("printenv: %+v streamed %q", res, streamed.String())
	}
	// The process really had the value; "" maps to the secret's own name.
	res, err = c.Exec(ctx, agentapi.ExecRequest{Shell: `[ "$TOKEN" = '` + testSecret + `' ] && echo same`, SecretEnv: map[string]string{"TOKEN": ""}}, nil)
	if err != nil || res.Stdout != "same\n" {
		t.Fatalf("value check: %+v %v", res, err)
	}
	// Only for that call.
	res, err = c.Exec(ctx, agentapi.ExecRequest{Shell: `echo "[$TOKEN][$X]"`}, nil)
	if err != nil || res.Stdout != "[][]\n" {
		t.Fatalf("leaked into a later call: %+v %v", res, err)
	}

	// Split across output chunks, on stdout and stderr.
	half := len(splitSecret) / 2
	for _, stream := range []string{"", " >&2"} {
		streamed.Reset()
		sh := "printf '" + splitSecret[:half] + "'" + stream + "; sleep 0.3; printf '" + splitSecret[half:] + "\\n'" + stream
		res, err = c.Exec(ctx, agentapi.ExecRequest{Shell: sh}, func(_ string, p []byte) { streamed.Write(p) })
		if err != nil {
			t.Fatal(err)
		}
		all := res.Stdout + res.Stderr
		if all != "[REDACTED]\n" || streamed.String() != "[REDACTED]\n" {
			t.Fatalf("split%s: %+v streamed %q", stream, res, streamed.String())
		}
	}

	// Encoded forms.
	for _, enc := range []string{"base64", "od -An -tx1 | tr -d ' \\n'"} {
		res, err = c.Exec(ctx, agentapi.ExecRequest{Shell: `printf %s "$TOKEN" | ` + enc, SecretEnv: map[string]string{"TOKEN": ""}}, nil)
		if err != nil || res.ExitCode != 0 || !strings.Contains(res.Stdout, "[REDACTED]") {
			t.Fatalf("%s: %+v %v", enc, res, err)
		}
		noSecret(t, enc, res.Stdout)
	}

	// A value the user typed into the command is redacted too, in output
	// and errors.
	res, err = c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"nonexistent-" + testSecret}}, nil)
	if err != nil || res.ExitCode != agentapi.ExitNotFound || !strings.Contains(res.Stderr, "[REDACTED]") {
		t.Fatalf("not found: %+v %v", res, err)
	}
	noSecret(t, "not-found stderr", res.Stderr)
	_, err = c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"true"}, Cwd: "/nonexistent/" + testSecret}, nil)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "[REDACTED]") {
		t.Fatalf("bad cwd: %v", err)
	}
	noSecret(t, "cwd error", err.Error())

	// Unknown secret: not_found naming it, no value.
	_, err = c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"true"}, SecretEnv: map[string]string{"TOKEN": "", "NOPE": ""}}, nil)
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), `"NOPE"`) {
		t.Fatalf("unknown secret: %v", err)
	}
	noSecret(t, "unknown secret error", err.Error())
}

func TestSecretsServiceLogsRedacted(t *testing.T) {
	dir := t.TempDir()
	c := newTestClient(t, Options{SecretsDir: dir})
	setTestSecrets(t, c, map[string]string{"TOKEN": testSecret, "SPLIT": splitSecret})
	stopAfter(t, c, "sec")
	half := len(splitSecret) / 2
	sh := `echo "token=$T"; printf '` + splitSecret[:half] + `'; sleep 0.3; printf '` + splitSecret[half:] + `\n'; echo done; sleep 100`
	st, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: "sec", Shell: sh, Cwd: "/", SecretEnv: map[string]string{"TOKEN": "T"}})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Active() {
		t.Fatalf("status %+v", st)
	}
	deadline := time.Now().Add(10 * time.Second)
	var logs agentapi.ServiceLogs
	for {
		logs, err = c.ServiceLogs(testCtx(t), "sec", 0, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(logs.Lines) >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	got := strings.Join(logs.Lines, "\n")
	if got != "token=[REDACTED]\n[REDACTED]\ndone" {
		t.Fatalf("logs %q", got)
	}
	_, err = c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: "sec2", Argv: []string{"true"}, SecretEnv: map[string]string{"NOPE": ""}})
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), `"NOPE"`) {
		t.Fatalf("unknown secret: %v", err)
	}
	// A failed start's error carries redacted log lines.
	_, err = c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: "sec3", Shell: `echo "$TOKEN"; exit 3`, Cwd: "/",
		SecretEnv: map[string]string{"TOKEN": ""}, Readiness: &agentapi.ServiceReadiness{Type: agentapi.ProbeFile, Path: "/nonexistent"}})
	if err == nil || !strings.Contains(err.Error(), "[REDACTED]") {
		t.Fatalf("failed start: %v", err)
	}
	noSecret(t, "failed start", err.Error())
}

func TestSecretsShellRedacted(t *testing.T) {
	dir := t.TempDir()
	c := newTestClient(t, Options{SecretsDir: dir})
	setTestSecrets(t, c, map[string]string{"TOKEN": testSecret, "SPLIT": splitSecret})
	info := openShell(t, c, agentapi.ShellOpenRequest{SecretEnv: map[string]string{"TOKEN": ""}})
	ctx := testCtx(t)
	if _, err := c.WriteShell(ctx, info.ShellID, `echo "v=$TOKEN"`, true); err != nil {
		t.Fatal(err)
	}
	out, cur := readUntil(t, c, info.ShellID, 0, "v=[REDACTED]")
	noSecret(t, "shell read", out)
	half := len(splitSecret) / 2
	if _, err := c.WriteShell(ctx, info.ShellID, `printf '`+splitSecret[:half]+`'; sleep 0.3; printf '`+splitSecret[half:]+`-end\n'`, true); err != nil {
		t.Fatal(err)
	}
	out, _ = readUntil(t, c, info.ShellID, cur, "[REDACTED]-end")
	noSecret(t, "shell split read", out)

	_, err := c.OpenShell(ctx, agentapi.ShellOpenRequest{Cwd: "/", SecretEnv: map[string]string{"NOPE": "X"}})
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), `"NOPE"`) {
		t.Fatalf("unknown secret: %v", err)
	}
}
