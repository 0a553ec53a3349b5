package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// Endless output is drained and dropped past the cap, and the timeout
// still ends the command with a result.
func TestExecEndlessOutputTimesOut(t *testing.T) {
	c := newTestClient(t, Options{})
	start := time.Now()
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"cat", "/dev/zero"}, TimeoutMS: 1000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut || !res.StdoutTruncated || !strings.Contains(res.Stdout, " bytes elided ...]\n") ||
		len(res.Stdout) > agentapi.DefaultMaxOutputBytes+64 {
		t.Fatalf("timed_out=%v truncated=%v len=%d", res.TimedOut, res.StdoutTruncated, len(res.Stdout))
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("took %s", el)
	}
}

// Past the cap, output is dropped off the Go poller: a flood still ends
// with its exit code, and a background process that holds the pipe after
// the command exits does not hold up the result beyond the grace.
func TestExecDropPastCap(t *testing.T) {
	c := newTestClient(t, Options{})
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Shell: "head -c 20000000 /dev/zero; echo THE-END; echo done >&2; exit 3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The head and the tail (with the command's last line) survive the cap.
	marker := "\n" + agentapi.ElisionMarker(20000000+8-agentapi.DefaultMaxOutputBytes) + "\n"
	if res.ExitCode != 3 || !res.StdoutTruncated || len(res.Stdout) != agentapi.DefaultMaxOutputBytes+len(marker) ||
		!strings.Contains(res.Stdout, marker) || !strings.HasSuffix(res.Stdout, "THE-END\n") || res.Stderr != "done\n" {
		t.Fatalf("exit=%d truncated=%v len=%d stderr=%q", res.ExitCode, res.StdoutTruncated, len(res.Stdout), res.Stderr)
	}
	start := time.Now()
	res, err = c.Exec(testCtx(t), agentapi.ExecRequest{Shell: "(sleep 20 &); head -c 2000000 /dev/zero", TimeoutMS: 30000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || !res.StdoutTruncated || res.TimedOut {
		t.Fatalf("exit=%d truncated=%v timed_out=%v", res.ExitCode, res.StdoutTruncated, res.TimedOut)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("took %s", el)
	}
}
