package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeHost puts an executable named exe on PATH that records its argv (one
// argument per line) in a file and prints listOut for `mcp list`.
func fakeHost(t *testing.T, dir, exe, listOut string) string {
	t.Helper()
	record := filepath.Join(dir, exe+".argv")
	script := "#!/bin/sh\nif [ \"$1 $2\" = \"mcp list\" ]; then printf '%s' '" + listOut + "'; exit 0; fi\n" +
		"for a in \"$@\"; do printf '%s\\n' \"$a\"; done > '" + record + "'\necho added\n"
	if err := os.WriteFile(filepath.Join(dir, exe), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return record
}

func runHostCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb}
	root := a.rootCommand()
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

// TestHostConnect: with claude/codex on PATH, connect runs their `mcp add`
// with the exact server command; without them it prints that command and
// runs nothing.
func TestHostConnect(t *testing.T) {
	t.Setenv("PYRO_HOME", t.TempDir())
	bin := t.TempDir()
	hostBinary = func() (string, error) { return "/opt/pyro/bin/pyro", nil }
	t.Cleanup(func() { hostBinary = os.Executable })
	want := []string{"mcp", "add", "pyro", "--", "/opt/pyro/bin/pyro", "mcp", "serve", "--profile", "workspace-full"}

	t.Setenv("PATH", bin)
	for _, c := range []struct{ host, exe string }{{"claude-code", "claude"}, {"codex", "codex"}} {
		out, _, err := runHostCLI(t, "host", "connect", c.host)
		if err != nil || !strings.Contains(out, "not on PATH") || !strings.Contains(out, c.exe+" mcp add pyro -- /opt/pyro/bin/pyro mcp serve --profile workspace-full") {
			t.Fatalf("%s without the tool: %v %q", c.host, err, out)
		}
		record := fakeHost(t, bin, c.exe, "")
		out, _, err = runHostCLI(t, "--json", "host", "connect", c.host)
		if err != nil {
			t.Fatalf("%s: %v %s", c.host, err, out)
		}
		b, err := os.ReadFile(record)
		if err != nil {
			t.Fatalf("%s was not run: %v", c.exe, err)
		}
		if got := strings.Split(strings.TrimSpace(string(b)), "\n"); !slices.Equal(got, want) {
			t.Fatalf("%s argv %q, want %q", c.exe, got, want)
		}
		var res hostConnectResult
		if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Ran || res.Command[0] != c.exe {
			t.Fatalf("%s result: %v %s", c.host, err, out)
		}
	}
	if _, _, err := runHostCLI(t, "host", "connect", "vim"); err == nil {
		t.Fatal("unknown host accepted")
	}
}

func TestHostPrintConfig(t *testing.T) {
	t.Setenv("PYRO_HOME", t.TempDir())
	hostBinary = func() (string, error) { return "/usr/local/bin/pyro", nil }
	t.Cleanup(func() { hostBinary = os.Executable })
	for host, check := range map[string]func(m map[string]any) bool{
		"claude-desktop": func(m map[string]any) bool {
			s := m["mcpServers"].(map[string]any)["pyro"].(map[string]any)
			return s["command"] == "/usr/local/bin/pyro" && len(s["args"].([]any)) == 4
		},
		"cursor": func(m map[string]any) bool { _, ok := m["mcpServers"].(map[string]any)["pyro"]; return ok },
		"opencode": func(m map[string]any) bool {
			s := m["mcp"].(map[string]any)["pyro"].(map[string]any)
			return s["type"] == "local" && len(s["command"].([]any)) == 5
		},
	} {
		out, _, err := runHostCLI(t, "host", "print-config", host)
		var m map[string]any
		if err != nil || json.Unmarshal([]byte(out), &m) != nil || !check(m) {
			t.Errorf("%s: %v %s", host, err, out)
		}
	}
	if _, _, err := runHostCLI(t, "host", "print-config", "emacs"); err == nil {
		t.Fatal("unknown host accepted")
	}
}

// TestHostDoctorRegistration: doctor reads each installed host's `mcp list`
// (fakes here); a server binary that cannot start is reported, with a
// non-zero exit.
func TestHostDoctorRegistration(t *testing.T) {
	t.Setenv("PYRO_HOME", t.TempDir())
	bin := t.TempDir()
	fakeHost(t, bin, "claude", "pyro: /x/pyro mcp serve - connected\nother: y\n")
	fakeHost(t, bin, "codex", "Name  Command\nother  z\n")
	t.Setenv("PATH", bin)
	hostBinary = func() (string, error) { return "/nonexistent/pyro", nil }
	t.Cleanup(func() { hostBinary = os.Executable })
	out, _, err := runHostCLI(t, "--json", "host", "doctor")
	var rep hostDoctorReport
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		t.Fatalf("%v: %s", jerr, out)
	}
	if err == nil || rep.OK || rep.Server.Starts || rep.Server.Error == "" {
		t.Fatalf("a missing server binary: err %v, report %+v", err, rep)
	}
	if len(rep.Hosts) != 2 || !rep.Hosts[0].Registered || !rep.Hosts[1].OnPath || rep.Hosts[1].Registered || rep.Hosts[1].Hint != "pyro host connect codex" {
		t.Fatalf("hosts: %+v", rep.Hosts)
	}
}
