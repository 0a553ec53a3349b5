package agent

import (
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
	if !res.TimedOut || !res.StdoutTruncated || len(res.Stdout) != agentapi.DefaultMaxOutputBytes {
		t.Fatalf("timed_out=%v truncated=%v len=%d", res.TimedOut, res.StdoutTruncated, len(res.Stdout))
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("took %s", el)
	}
}
