package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The guest-abuse scenarios: a command that misbehaves inside a workspace
// (floods output, forks without end, eats memory, fills a disk or the root
// overlay, a service that logs without end) must not silence the guest
// agent. Each ends with `workspace exec -- true` answering within
// answerWithin. Guests are small (abuseMemMiB, abuseDiskMiB) so the abuse
// reaches its limit in seconds.

const (
	abuseMemMiB  = 256
	abuseDiskMiB = 64
	answerWithin = 30 * time.Second
)

// abuseWorkspace creates a small workspace and returns its id and the
// environment to reach it; the workspace is deleted when the test ends.
func abuseWorkspace(t *testing.T) (string, []string) {
	t.Helper()
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	env = append(env, "PYRO_WORKSPACE_DISK_MIB="+strconv.Itoa(abuseDiskMiB))
	var w wsStatus
	mustWS(t, env, &w, "create", "--mem-mib", strconv.Itoa(abuseMemMiB), baseEnv)
	t.Cleanup(func() { ws(t, env, nil, "delete", w.WorkspaceID) })
	return w.WorkspaceID, env
}

// boundedExec runs `workspace exec --json ID [flags] -- cmd...` and kills the
// CLI if it has not answered within limit: a hung agent fails the test
// instead of hanging it. It returns the decoded result (nil when the CLI
// printed none) and how long it took.
func boundedExec(t *testing.T, env []string, limit time.Duration, id string, flags []string, cmd ...string) (map[string]any, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	args := append([]string{"workspace", "exec", "--json", id}, flags...)
	args = append(append(args, "--"), cmd...)
	c := exec.CommandContext(ctx, pyroBin, args...)
	c.Env = append(os.Environ(), env...)
	c.WaitDelay = 2 * time.Second
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	start := time.Now()
	_ = c.Run()
	el := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("exec %q gave no answer within %s (stderr: %.2000s)", cmd, limit, errb.String())
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Logf("exec %q: no JSON result (%v); stderr: %.2000s", cmd, err, errb.String())
		return nil, el
	}
	return m, el
}

// requireAnswers checks that the workspace still runs commands: `true`
// exits 0 within answerWithin, and /workspace is still writable.
func requireAnswers(t *testing.T, env []string, id string) {
	t.Helper()
	m, el := boundedExec(t, env, answerWithin, id, nil, "true")
	if m == nil || m["exit_code"] != float64(0) {
		t.Fatalf("exec true after abuse: %v (after %s)", m, el)
	}
	t.Logf("exec true answered in %s", el.Round(time.Millisecond))
}

func TestAbuseForkBomb(t *testing.T) {
	id, env := abuseWorkspace(t)
	// The bomb as the issue wrote it: bash returns at once and leaves the
	// bomb running in the background.
	m, el := boundedExec(t, env, answerWithin, id, []string{"--timeout-seconds", "5"}, "bash", "-c", "b(){ b|b& }; b")
	t.Logf("fork bomb exec: %v after %s", m, el.Round(time.Millisecond))
	requireAnswers(t, env, id)

	// A bomb whose command keeps running: its timeout ends the whole
	// tree, bomb included.
	m, el = boundedExec(t, env, answerWithin, id, []string{"--timeout-seconds", "4"}, "bash", "-c", "b(){ b|b& }; b; sleep 600")
	if m == nil || m["timed_out"] != true {
		t.Fatalf("fork bomb with a timeout: %v after %s", m, el)
	}
	requireAnswers(t, env, id)
	// Nothing of it is left: count the processes whose command line is
	// the bomb's (the image has no ps; the pattern does not match itself).
	m, _ = boundedExec(t, env, answerWithin, id, nil, "sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done | grep -c 'sleep 6[0]0' || true")
	if m == nil || strings.TrimSpace(m["stdout"].(string)) != "0" {
		t.Fatalf("processes of the timed-out bomb left: %v", m)
	}
}

func TestAbuseHugeStdout(t *testing.T) {
	id, env := abuseWorkspace(t)
	// Under TCG 1 GiB through a pipe may outlast the timeout: finishing
	// or timing out are both fine, as long as the output stays capped
	// and the answer comes.
	m, el := boundedExec(t, env, 60*time.Second, id, []string{"--timeout-seconds", "20"}, "head", "-c", "1G", "/dev/zero")
	if m == nil {
		t.Fatal("no result for 1 GiB of stdout")
	}
	out, _ := m["stdout"].(string)
	if m["stdout_truncated"] != true || len(out) > 1<<20+64 { // the cap plus the elision marker
		t.Fatalf("1 GiB stdout: truncated=%v, %d bytes kept (exit %v)", m["stdout_truncated"], len(out), m["exit_code"])
	}
	t.Logf("1 GiB of stdout: exit %v, timed_out %v, after %s", m["exit_code"], m["timed_out"], el.Round(time.Millisecond))
	requireAnswers(t, env, id)
	if m, _ := boundedExec(t, env, answerWithin, id, nil, "sh", "-c", "echo ok > f && cat f"); m == nil || m["stdout"] != "ok\n" {
		t.Fatalf("workspace unusable after 1 GiB of stdout: %v", m)
	}
}

func TestAbuseOOM(t *testing.T) {
	id, env := abuseWorkspace(t)
	// tail keeps its last lines in memory: /dev/zero has no newline, so
	// its one line grows until something stops it.
	m, el := boundedExec(t, env, answerWithin, id, []string{"--timeout-seconds", "20"}, "tail", "/dev/zero")
	if m == nil || m["exit_code"] == float64(0) {
		t.Fatalf("memory hog: %v after %s", m, el)
	}
	t.Logf("memory hog ended with exit %v signal %v after %s", m["exit_code"], m["signal"], el.Round(time.Millisecond))
	requireAnswers(t, env, id)
}

func TestAbuseWorkspaceFull(t *testing.T) {
	id, env := abuseWorkspace(t)
	m, el := boundedExec(t, env, answerWithin, id, []string{"--timeout-seconds", "25"}, "sh", "-c", "dd if=/dev/zero of=/workspace/fill bs=1M 2>&1; df -k /workspace")
	if m == nil || !strings.Contains(m["stdout"].(string), "No space left") {
		t.Fatalf("filling /workspace: %v after %s", m, el)
	}
	requireAnswers(t, env, id)
	// Freeing the space makes the workspace writable again.
	if m, _ := boundedExec(t, env, answerWithin, id, nil, "sh", "-c", "rm /workspace/fill && echo ok > /workspace/f && cat /workspace/f"); m == nil || m["stdout"] != "ok\n" {
		t.Fatalf("workspace after freeing space: %v", m)
	}
}

func TestAbuseRootOverlayFull(t *testing.T) {
	id, env := abuseWorkspace(t)
	// /var/tmp is on the root's writable layer, a tmpfs in guest memory.
	m, el := boundedExec(t, env, answerWithin, id, []string{"--timeout-seconds", "25"}, "sh", "-c", "dd if=/dev/zero of=/var/tmp/fill bs=1M 2>&1; echo dd-exit=$?")
	if m == nil {
		t.Fatalf("filling the root overlay: no result after %s", el)
	}
	t.Logf("filling the root overlay: exit %v after %s: %.300s", m["exit_code"], el.Round(time.Millisecond), m["stdout"])
	requireAnswers(t, env, id)
}

func TestAbuseServiceLogFlood(t *testing.T) {
	id, env := abuseWorkspace(t)
	mustWS(t, env, nil, "service", "start", id, "flood", "--", "yes", "pyro-flood-line")
	time.Sleep(3 * time.Second)
	requireAnswers(t, env, id)
	var logs struct {
		Lines     []string `json:"lines"`
		Truncated bool     `json:"truncated"`
	}
	mustWS(t, env, &logs, "service", "logs", id, "flood")
	if len(logs.Lines) < 2 || logs.Lines[0] != "pyro-flood-line" || !logs.Truncated {
		t.Fatalf("flood logs: %d lines, truncated=%v", len(logs.Lines), logs.Truncated)
	}
	mustWS(t, env, nil, "service", "stop", id, "flood")
	requireAnswers(t, env, id)
}

// User work runs in the guest's user cgroup, with limits below the
// guest's totals and a normal OOM score; init and the agent stay outside
// it, at oom_score_adj -1000.
func TestAbuseUserCgroup(t *testing.T) {
	id, env := abuseWorkspace(t)
	script := `cat /proc/self/cgroup; echo adj=$(cat /proc/self/oom_score_adj)
cat /sys/fs/cgroup/pyro-user/pids.max /sys/fs/cgroup/pyro-user/memory.max
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in *__pyro-agen[t]*) echo agent=$(cat $p/oom_score_adj) cg=$(cat $p/cgroup);; esac
done
echo init=$(cat /proc/1/oom_score_adj)`
	m, _ := boundedExec(t, env, answerWithin, id, nil, "sh", "-c", script)
	if m == nil {
		t.Fatal("no result")
	}
	out := m["stdout"].(string)
	t.Logf("%s", out)
	for _, want := range []string{"0::/pyro-user/exec-", "adj=0\n", "agent=-1000 cg=0::/\n", "init=-1000\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 4 {
		t.Fatalf("short output")
	}
	if n, err := strconv.Atoi(lines[2]); err != nil || n <= 0 {
		t.Errorf("pids.max %q", lines[2])
	}
	if n, err := strconv.ParseInt(lines[3], 10, 64); err != nil || n <= 0 || n >= abuseMemMiB<<20 {
		t.Errorf("memory.max %q is not below the guest's %d MiB", lines[3], abuseMemMiB)
	}
}
