package mcpserver

import (
	"strings"
	"testing"
)

// The job tools are in workspace-full (not the contract), and fail with
// categorized, hinted errors before any guest is involved.
func TestJobTools(t *testing.T) {
	cs := connectWith(t, Options{}, allTools(), nil)
	for _, c := range []struct {
		tool   string
		args   any
		prefix string
	}{
		{"workspace_exec_background", map[string]any{"workspace_id": "nope", "command": "sleep 100"}, "not_found: "},
		{"workspace_exec_background", map[string]any{"workspace_id": "nope", "command": "  "}, "invalid_argument: "},
		{"workspace_job_read", map[string]any{"workspace_id": "nope", "job_id": "abc"}, "not_found: "},
		{"workspace_job_wait", map[string]any{"workspace_id": "nope", "job_id": "abc", "timeout_seconds": 5}, "not_found: "},
		{"workspace_job_wait", map[string]any{"workspace_id": "nope", "job_id": "abc", "timeout_seconds": 0}, "invalid_argument: "},
	} {
		res, text := callTool(t, cs, c.tool, c.args)
		if !res.IsError || !strings.HasPrefix(text, c.prefix) || !strings.Contains(text, "hint: ") {
			t.Errorf("%s %v: %v %q, want %q with a hint", c.tool, c.args, res.IsError, text, c.prefix)
		}
	}
	for _, tl := range table {
		if strings.Contains(tl.name, "job") {
			t.Errorf("contract table has %s", tl.name)
		}
	}
}
