package mcpserver

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// callText calls a tool and returns its text and isError.
func callText(t *testing.T, cs *mcp.ClientSession, params *mcp.CallToolParams) (string, bool) {
	t.Helper()
	res, err := cs.CallTool(context.Background(), params)
	if err != nil {
		t.Fatalf("%s: %v", params.Name, err)
	}
	text := ""
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			text += tc.Text
		}
	}
	return text, res.IsError
}

// TestLongTimeoutNeedsProgress: vm_run and workspace_exec refuse a
// timeout beyond the clients' 60 s deadline unless the call carries a
// progress token; with one the call goes ahead (here to the SDK's own
// failure: there is no guest), and 60 s or less always goes ahead.
func TestLongTimeoutNeedsProgress(t *testing.T) {
	cs := connect(t)
	for _, c := range []struct {
		name string
		args map[string]any
	}{
		{"vm_run", map[string]any{"command": "sleep 100", "timeout_seconds": 120}},
		{"workspace_exec", map[string]any{"workspace_id": "nosuch", "command": "sleep 100", "timeout_seconds": 120}},
	} {
		text, isErr := callText(t, cs, &mcp.CallToolParams{Name: c.name, Arguments: c.args})
		if !isErr || !strings.HasPrefix(text, "invalid_argument: timeout_seconds 120") || !strings.Contains(text, "progressToken") {
			t.Errorf("%s with 120 s and no progress token: %q, want invalid_argument with a hint", c.name, text)
		}
		p := &mcp.CallToolParams{Name: c.name, Arguments: c.args}
		p.SetProgressToken("t")
		if text, _ := callText(t, cs, p); strings.Contains(text, "timeout_seconds 120") {
			t.Errorf("%s with 120 s and a progress token was refused: %q", c.name, text)
		}
		c.args["timeout_seconds"] = 60
		if text, _ := callText(t, cs, &mcp.CallToolParams{Name: c.name, Arguments: c.args}); strings.Contains(text, "timeout_seconds 60") {
			t.Errorf("%s with 60 s was refused: %q", c.name, text)
		}
	}
}

// TestHeartbeatWhileQuiet: a long call with a progress token reports
// progress while its command prints nothing, so clients keep waiting.
func TestHeartbeatWhileQuiet(t *testing.T) {
	defer func(d time.Duration) { heartbeatEvery = d }(heartbeatEvery)
	heartbeatEvery = 30 * time.Millisecond
	var beats atomic.Int32
	quiet := def(tool{name: "quiet", title: "Quiet", description: "Runs quietly for a while; a test tool for the heartbeat."},
		func(ctx context.Context, cl *call, _ noIn) (blockOut, string, error) {
			stop, err := cl.longCall(ctx, 3600)
			if err != nil {
				return blockOut{}, "", err
			}
			defer stop()
			// Quiet until the client has seen three heartbeats (a fixed
			// 300 ms saw fewer on a loaded host), or long past when it
			// should have.
			for deadline := time.Now().Add(30 * time.Second); beats.Load() < 3 && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			return blockOut{Done: true}, "done", nil
		})
	cs := connectWith(t, Options{}, append(slices.Clone(table), quiet), &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, r *mcp.ProgressNotificationClientRequest) {
			if strings.HasPrefix(r.Params.Message, "still running") {
				beats.Add(1)
			}
		}})
	p := &mcp.CallToolParams{Name: "quiet", Arguments: map[string]any{}}
	p.SetProgressToken("q")
	if text, isErr := callText(t, cs, p); isErr {
		t.Fatal(text)
	}
	if n := beats.Load(); n < 3 {
		t.Errorf("%d heartbeats at 30 ms while the call ran, want several", n)
	}
}
