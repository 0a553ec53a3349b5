package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// filesContaining lists the regular files under root (symlinks are not
// followed) that contain any of needles. Sparse files are read by their
// data extents only.
func filesContaining(t *testing.T, root string, needles ...string) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		found, err := fileContains(path, needles)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if found {
			hits = append(hits, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

func fileContains(path string, needles []string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	maxLen := 0
	for _, n := range needles {
		maxLen = max(maxLen, len(n))
	}
	size := st.Size()
	fd := int(f.Fd())
	buf := make([]byte, 1<<20)
	var off int64
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				return false, nil // only a hole left
			}
			data = off // no SEEK_DATA: read everything
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		// Read [data, hole) with an overlap so matches across buffer
		// boundaries are seen.
		var carry []byte
		for pos := data; pos < hole; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if n > 0 {
				chunk := append(carry, buf[:n]...)
				for _, needle := range needles {
					if bytes.Contains(chunk, []byte(needle)) {
						return true, nil
					}
				}
				keep := min(len(chunk), maxLen-1)
				carry = append([]byte(nil), chunk[len(chunk)-keep:]...)
				pos += int64(n)
			}
			if err != nil {
				if err == io.EOF {
					break
				}
				return false, err
			}
		}
		off = hole
	}
	return false, nil
}

func TestSecrets(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	token := "tok-" + randomHex(t, 24)
	keyValue := "key-" + randomHex(t, 24) + "\n"
	keyFile := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(keyFile, []byte(keyValue), 0o600); err != nil {
		t.Fatal(err)
	}
	forms := []string{token, base64.StdEncoding.EncodeToString([]byte(token)), hex.EncodeToString([]byte(token)), strings.TrimSpace(keyValue)}
	noValue := func(what, s string) {
		t.Helper()
		for _, f := range forms {
			if strings.Contains(s, f) {
				t.Fatalf("%s shows a secret (%q): %s", what, f, s)
			}
		}
	}

	// Bad inputs are refused up front.
	for _, args := range [][]string{
		{"create", "--secret", "1BAD=x", baseEnv},
		{"create", "--secret", "A=x", "--secret", "A=y", baseEnv},
		{"create", "--secret-file", "A=/nonexistent/file", baseEnv},
	} {
		if r := ws(t, env, nil, args...); r.code == 0 {
			t.Fatalf("%v accepted: %s", args, r.stdout)
		}
	}

	var w wsStatus
	r := ws(t, env, &w, "create", "--secret", "TOKEN="+token, "--secret-file", "KEY="+keyFile, baseEnv)
	if r.code != 0 {
		t.Fatalf("create: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	noValue("create output", r.stdout+r.stderr)
	id := w.WorkspaceID
	deleted := false
	defer func() {
		if !deleted {
			ws(t, env, nil, "delete", id)
		}
	}()
	if len(w.Secrets) != 2 || w.Secrets[0]["name"] != "TOKEN" || w.Secrets[0]["source"] != "literal" ||
		w.Secrets[1]["name"] != "KEY" || w.Secrets[1]["source"] != "file" || len(w.Secrets[0]) != 2 {
		t.Fatalf("secrets metadata: %+v", w.Secrets)
	}

	execOut := func(args ...string) map[string]any {
		t.Helper()
		var m map[string]any
		r := ws(t, env, &m, append([]string{"exec", id}, args...)...)
		if r.code != 0 || m == nil {
			t.Fatalf("exec %v: exit %d: %s %s", args, r.code, r.stdout, r.stderr)
		}
		noValue("exec "+strings.Join(args, " "), r.stdout+r.stderr)
		return m
	}

	// printenv comes back redacted.
	if m := execOut("--secret-env", "TOKEN", "--", "printenv", "TOKEN"); m["stdout"] != "[REDACTED]\n" {
		t.Fatalf("printenv: %v", m)
	}
	// NAME=VAR maps to another variable, for that call only.
	if m := execOut("--secret-env", "TOKEN=OTHER_VAR", "--", `echo "[$TOKEN] $OTHER_VAR"`); m["stdout"] != "[] [REDACTED]\n" {
		t.Fatalf("mapped: %v", m)
	}
	if m := execOut("--", `echo "[$TOKEN][$OTHER_VAR]"`); m["stdout"] != "[][]\n" {
		t.Fatalf("secret leaked into a later call: %v", m)
	}
	// The guest really had the value.
	sum := sha256.Sum256([]byte(token))
	if m := execOut("--secret-env", "TOKEN", "--", `printf %s "$TOKEN" | sha256sum`); !strings.HasPrefix(m["stdout"].(string), hex.EncodeToString(sum[:])) {
		t.Fatalf("guest hash %v, want %x", m["stdout"], sum)
	}
	keySum := sha256.Sum256([]byte(keyValue))
	if m := execOut("--", "sha256sum /run/pyro-secrets/KEY"); !strings.HasPrefix(m["stdout"].(string), hex.EncodeToString(keySum[:])) {
		t.Fatalf("key file hash %v, want %x", m["stdout"], keySum)
	}
	// The files: 0400 on a 0700 tmpfs, nothing under /workspace.
	m := execOut("--", "stat -c '%a %F' /run/pyro-secrets/TOKEN /run/pyro-secrets/KEY /run/pyro-secrets; grep -c ' /run/pyro-secrets tmpfs ' /proc/mounts; find /workspace -name TOKEN -o -name KEY -o -name 'pyro-secrets*' | wc -l")
	if m["stdout"] != "400 regular file\n400 regular file\n700 directory\n1\n0\n" {
		t.Fatalf("secret files: %q", m["stdout"])
	}
	if m := execOut("--secret-env", "TOKEN", "--", `grep -rlF "$TOKEN" /workspace | wc -l`); m["stdout"] != "0\n" {
		t.Fatalf("value under /workspace: %v", m)
	}
	// Encoded forms are redacted; so is a value typed into the command.
	for _, enc := range []string{"base64", "od -An -tx1 | tr -d ' \\n'"} {
		if m := execOut("--secret-env", "TOKEN", "--", `printf %s "$TOKEN" | `+enc); !strings.Contains(m["stdout"].(string), "[REDACTED]") {
			t.Fatalf("%s: %v", enc, m)
		}
	}
	if m := execOut("--", "echo", token); m["stdout"] != "[REDACTED]\n" {
		t.Fatalf("typed value: %v", m)
	}
	// Split across output chunks.
	half := len(token) / 2
	if m := execOut("--", "printf '"+token[:half]+"'; sleep 0.5; printf '"+token[half:]+"\\n'"); m["stdout"] != "[REDACTED]\n" {
		t.Fatalf("split: %v", m)
	}
	// Unknown secret: an error naming it, no value.
	r = ws(t, env, nil, "exec", id, "--secret-env", "NOPE", "--", "true")
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "NOPE") {
		t.Fatalf("unknown secret: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	noValue("unknown secret error", r.stdout+r.stderr)

	// History: output and the command line are redacted.
	r = ws(t, env, nil, "logs", id)
	if r.code != 0 || !strings.Contains(r.stdout, "[REDACTED]") {
		t.Fatalf("logs: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	noValue("history", r.stdout)

	// Services.
	var svc map[string]any
	r = ws(t, env, &svc, "service", "start", id, "leaky", "--secret-env", "TOKEN", "--", `sh -c 'echo "tok=$TOKEN"; sleep 100'`)
	if r.code != 0 {
		t.Fatalf("service start: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var logs struct{ Lines []string }
		r = ws(t, env, &logs, "service", "logs", id, "leaky")
		noValue("service logs", r.stdout+r.stderr)
		if strings.Contains(strings.Join(logs.Lines, "\n"), "tok=[REDACTED]") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service logs: %s %s", r.stdout, r.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r := ws(t, env, nil, "service", "start", id, "nope", "--secret-env", "NOPE", "--", "sleep 100"); r.code == 0 || !strings.Contains(r.stdout+r.stderr, "NOPE") {
		t.Fatalf("service with unknown secret: exit %d: %s %s", r.code, r.stdout, r.stderr)
	}
	mustWS(t, env, nil, "service", "stop", id, "leaky")

	// Shells.
	var sh struct {
		ShellID string `json:"shell_id"`
	}
	mustWS(t, env, &sh, "shell", "open", id, "--secret-env", "TOKEN")
	mustWS(t, env, nil, "shell", "write", id, sh.ShellID, "--input", `echo "v=$TOKEN"`)
	out, cur := readUntil(t, env, id, sh.ShellID, 0, "v=[REDACTED]")
	noValue("shell read", out)
	mustWS(t, env, nil, "shell", "write", id, sh.ShellID, "--input", "printf '"+token[:half]+"'; sleep 0.5; printf '"+token[half:]+"-end\\n'")
	out, _ = readUntil(t, env, id, sh.ShellID, cur, "[REDACTED]-end")
	noValue("shell split read", out)
	mustWS(t, env, nil, "shell", "close", id, sh.ShellID)

	// Snapshots, exports and diffs never hold the value.
	mustWS(t, env, nil, "snapshot", "create", id, "s1")
	exp := filepath.Join(t.TempDir(), "export")
	mustWS(t, env, nil, "export", id, "/workspace", "--output", exp)
	if hits := filesContaining(t, exp, forms...); len(hits) > 0 {
		t.Fatalf("export holds a secret: %v", hits)
	}
	r = ws(t, env, nil, "diff", id)
	if r.code != 0 {
		t.Fatalf("diff: exit %d: %s", r.code, r.stderr)
	}
	noValue("diff", r.stdout)

	// Reset materialises the secrets again.
	mustWS(t, env, &w, "reset", id)
	if m := execOut("--secret-env", "TOKEN", "--", `printf %s "$TOKEN" | sha256sum; printenv TOKEN; stat -c %a /run/pyro-secrets/TOKEN`); m["stdout"] != hex.EncodeToString(sum[:])+"  -\n[REDACTED]\n400\n" {
		t.Fatalf("after reset: %q", m["stdout"])
	}

	// The whole state directory holds the values only in the 0600 file.
	secretsFile := filepath.Join(home, "workspaces", id, "secrets.json")
	hits := filesContaining(t, home, forms...)
	if len(hits) != 1 || hits[0] != secretsFile {
		t.Fatalf("state files holding a secret: %v (want only %s)", hits, secretsFile)
	}
	if st, err := os.Stat(secretsFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secrets file: %v %v", st, err)
	}

	// Delete removes the material.
	mustWS(t, env, nil, "delete", id)
	deleted = true
	if _, err := os.Stat(secretsFile); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("secrets file after delete: %v", err)
	}
	if hits := filesContaining(t, home, forms...); len(hits) != 0 {
		t.Fatalf("state files holding a secret after delete: %v", hits)
	}
}
