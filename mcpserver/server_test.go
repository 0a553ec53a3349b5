package mcpserver

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/pyro-mcp/pyro"
)

// connect runs the server over in-memory transports and returns a real
// client session.
func connect(t *testing.T) *mcp.ClientSession {
	t.Helper()
	return connectWith(t, Options{}, table, nil)
}

// connectWith serves tools with opts to a client made with copts.
func connectWith(t *testing.T, opts Options, tools []tool, copts *mcp.ClientOptions) *mcp.ClientSession {
	t.Helper()
	return serve(t, opts, tools, mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, copts))
}

// connectClient serves the table with opts to client.
func connectClient(t *testing.T, opts Options, client *mcp.Client) *mcp.ClientSession {
	t.Helper()
	return serve(t, opts, table, client)
}

func serve(t *testing.T, opts Options, tools []tool, client *mcp.Client) *mcp.ClientSession {
	t.Helper()
	c, err := pyro.New(pyro.Options{StateDir: t.TempDir(), Binary: "/nonexistent/pyro"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, ct := mcp.NewInMemoryTransports()
	s, err := newServer(c, opts, tools)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := s.Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Close() })
	cs, err := client.Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.Close() })
	return cs
}

// schema is the part of a JSON schema the tests look at.
type schema struct {
	Type       json.RawMessage    `json:"type"`
	Required   []string           `json:"required"`
	Properties map[string]*schema `json:"properties"`
	Desc       string             `json:"description"`
	Default    json.RawMessage    `json:"default"`
	Items      *schema            `json:"items"`
}

func schemaOf(t *testing.T, v any) *schema {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var s schema
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func TestMCPToolsMatchContract(t *testing.T) {
	cs := connect(t)
	ctx := context.Background()
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	tools := map[string]*mcp.Tool{}
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
		tools[tool.Name] = tool
	}
	// The public contract's tool list, stated once here, independently of
	// the table, so that a table typo or a lost row fails.
	contract := []string{
		"vm_run",
		"vm_list_environments", "vm_create", "vm_start", "vm_exec", "vm_stop", "vm_delete", "vm_status", "vm_network_info", "vm_reap_expired",
		"workspace_create", "workspace_sync_push", "workspace_exec", "workspace_export", "workspace_diff",
		"snapshot_create", "snapshot_list", "snapshot_delete", "workspace_reset",
		"service_start", "service_list", "service_status", "service_logs", "service_stop",
		"shell_open", "shell_read", "shell_write", "shell_signal", "shell_close",
		"workspace_status", "workspace_logs", "workspace_delete",
	}
	if !slices.Equal(ToolNames(), contract) {
		t.Fatalf("table:\n got %v\nwant %v", ToolNames(), contract)
	}
	slices.Sort(names)
	sorted := slices.Sorted(slices.Values(contract))
	if !slices.Equal(names, sorted) {
		t.Fatalf("tools:\n got %v\nwant %v", names, sorted)
	}
	if res.NextCursor != "" {
		t.Fatalf("tools list is paginated")
	}

	for _, tool := range res.Tools {
		if tool.Title == "" {
			t.Errorf("%s: no title", tool.Name)
		}
		if len(tool.Description) < 40 {
			t.Errorf("%s: description too short for a model: %q", tool.Name, tool.Description)
		}
		in := schemaOf(t, tool.InputSchema)
		if string(in.Type) != `"object"` {
			t.Errorf("%s: input schema type %s", tool.Name, in.Type)
		}
		for name, p := range in.Properties {
			if p.Desc == "" {
				t.Errorf("%s.%s: no description", tool.Name, name)
			}
			if strings.ToLower(name) != name {
				t.Errorf("%s.%s: not snake_case", tool.Name, name)
			}
		}
		for _, r := range in.Required {
			if in.Properties[r] == nil {
				t.Errorf("%s: required %q is not a property", tool.Name, r)
			}
		}
		if tool.OutputSchema == nil {
			t.Errorf("%s: no output schema", tool.Name)
		}
	}

	// Required fields and documented defaults on the main tools.
	type check struct {
		tool     string
		required []string
		defaults map[string]string // property -> default JSON
	}
	for _, c := range []check{
		{"vm_run", []string{"command"}, map[string]string{"environment": `"debian:12"`, "vcpu_count": "1", "mem_mib": "1024", "timeout_seconds": "30", "allow_host_compat": "false", "network": "false"}},
		{"vm_create", nil, map[string]string{"vcpu_count": "1", "mem_mib": "1024", "allow_host_compat": "false"}},
		{"vm_exec", []string{"vm_id", "command"}, map[string]string{"timeout_seconds": "30"}},
		{"workspace_create", nil, map[string]string{"vcpu_count": "1", "mem_mib": "1024", "allow_host_compat": "false"}},
		{"workspace_exec", []string{"workspace_id", "command"}, map[string]string{"timeout_seconds": "30"}},
		{"workspace_sync_push", []string{"workspace_id", "source_path"}, map[string]string{"dest": `"/workspace"`}},
		{"workspace_export", []string{"workspace_id", "path", "output_path"}, nil},
		{"workspace_reset", []string{"workspace_id"}, map[string]string{"snapshot": `"baseline"`}},
		{"snapshot_create", []string{"workspace_id", "snapshot_name"}, nil},
		{"service_start", []string{"workspace_id", "service_name", "command"}, map[string]string{"cwd": `"/workspace"`, "ready_timeout_seconds": "30", "ready_interval_ms": "500"}},
		{"service_logs", []string{"workspace_id", "service_name"}, map[string]string{"tail_lines": "200"}},
		{"shell_open", []string{"workspace_id"}, map[string]string{"cols": "120", "rows": "30", "cwd": `"/workspace"`}},
		{"shell_read", []string{"workspace_id", "shell_id"}, map[string]string{"cursor": "0", "max_chars": "65536"}},
		{"shell_write", []string{"workspace_id", "shell_id", "input"}, map[string]string{"append_newline": "true"}},
		{"shell_signal", []string{"workspace_id", "shell_id"}, map[string]string{"signal_name": `"INT"`}},
		{"shell_close", []string{"workspace_id", "shell_id"}, nil},
	} {
		in := schemaOf(t, tools[c.tool].InputSchema)
		got := slices.Sorted(slices.Values(in.Required))
		want := slices.Sorted(slices.Values(c.required))
		if !slices.Equal(got, want) {
			t.Errorf("%s: required %v, want %v", c.tool, got, want)
		}
		for prop, def := range c.defaults {
			p := in.Properties[prop]
			if p == nil {
				t.Errorf("%s: no property %q", c.tool, prop)
				continue
			}
			if string(p.Default) != def {
				t.Errorf("%s.%s: default %s, want %s", c.tool, prop, p.Default, def)
			}
		}
	}
	secrets := schemaOf(t, tools["workspace_create"].InputSchema).Properties["secrets"]
	if secrets == nil || secrets.Items == nil || secrets.Items.Properties["file_path"] == nil || !slices.Equal(secrets.Items.Required, []string{"name"}) {
		t.Errorf("workspace_create.secrets schema: %+v", secrets)
	}
}

func TestMCPInstructions(t *testing.T) {
	cs := connect(t)
	ins := cs.InitializeResult().Instructions
	for _, w := range []string{"vm_run", "workspace_create", "workspace_delete", "secret_env", pyro.DefaultEnvironment, "structuredContent"} {
		if !strings.Contains(ins, w) {
			t.Errorf("instructions do not mention %s", w)
		}
	}
	// Every tool-like word in the instructions names a tool of the table
	// (or a group of them, like service_*), so a renamed tool cannot leave
	// the model a stale name.
	prefixes := map[string]bool{}
	for _, n := range ToolNames() {
		prefixes[n[:strings.Index(n, "_")+1]] = true
	}
	args := map[string]bool{"seed_path": true, "secret_env": true, "exit_code": true, "vcpu_count": true, "mem_mib": true,
		"timeout_seconds": true, "allow_host_compat": true, "source_path": true, "file_path": true, "output_path": true}
	for _, w := range regexp.MustCompile(`[a-z]+_[a-z_]*\*?`).FindAllString(ins, -1) {
		if args[w] || !prefixes[w[:strings.Index(w, "_")+1]] {
			continue
		}
		if strings.HasSuffix(w, "_*") {
			continue
		}
		if !slices.Contains(ToolNames(), w) {
			t.Errorf("instructions name %q, which is not a tool", w)
		}
	}
}

// TestMCPPanicIsToolError: a handler that panics gives an internal tool
// error and the server answers the next call.
func TestMCPPanicIsToolError(t *testing.T) {
	boom := def(tool{name: "boom", title: "Panic", description: "Panics, to test the server's recovery."},
		func(context.Context, *call, noIn) (snapshotDeleted, string, error) {
			var m map[string]int
			m["x"]++ // nil map write: a runtime panic, like a real bug
			return snapshotDeleted{}, "", nil
		})
	cs := connectWith(t, Options{}, append(slices.Clone(table), boom), nil)
	for range 2 {
		res, text := callTool(t, cs, "boom", nil)
		if !res.IsError || !strings.HasPrefix(text, "internal: tool boom failed unexpectedly") || !strings.Contains(text, "hint: ") {
			t.Fatalf("panic: isError=%v %q", res.IsError, text)
		}
		if res, text := callTool(t, cs, "vm_list_environments", nil); res.IsError {
			t.Fatalf("after a panic: %s", text)
		}
	}
}

// callTool calls a tool and returns the result's first text.
func callTool(t *testing.T, cs *mcp.ClientSession, name string, args any) (*mcp.CallToolResult, string) {
	t.Helper()
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: protocol error: %v", name, err)
	}
	text := ""
	if len(res.Content) > 0 {
		if tc, ok := res.Content[0].(*mcp.TextContent); ok {
			text = tc.Text
		}
	}
	return res, text
}

func TestMCPToolErrors(t *testing.T) {
	cs := connect(t)
	for _, c := range []struct {
		tool   string
		args   any
		prefix string
	}{
		{"vm_status", map[string]any{"vm_id": "nope"}, "not_found: "},
		{"vm_delete", map[string]any{"vm_id": "nope"}, "not_found: "},
		{"workspace_exec", map[string]any{"workspace_id": "nope", "command": "true"}, "not_found: "},
		{"workspace_delete", map[string]any{"workspace_id": "nope"}, "not_found: "},
		{"shell_read", map[string]any{"workspace_id": "nope", "shell_id": "x"}, "not_found: "},
		{"service_logs", map[string]any{"workspace_id": "nope", "service_name": "web"}, "not_found: "},
		{"vm_run", map[string]any{"command": "  "}, "invalid_argument: "},
		{"vm_create", map[string]any{"vcpu_count": 999}, "invalid_argument: "},
		{"vm_create", map[string]any{"environment": "windows:11"}, "not_found: "},
		{"vm_run", map[string]any{"command": "true", "vcpu_count": "two"}, "invalid_argument: "},
		{"vm_run", map[string]any{}, "invalid_argument: "},
		{"vm_run", map[string]any{"command": "true", "bogus": 1}, "invalid_argument: "},
	} {
		res, text := callTool(t, cs, c.tool, c.args)
		t.Logf("%s %v -> %s", c.tool, c.args, text)
		if !res.IsError {
			t.Errorf("%s %v: not a tool error: %s", c.tool, c.args, text)
			continue
		}
		if !strings.HasPrefix(text, c.prefix) {
			t.Errorf("%s %v: %q does not start with %q", c.tool, c.args, text, c.prefix)
		}
		if !strings.Contains(text, "hint: ") {
			t.Errorf("%s %v: no hint in %q", c.tool, c.args, text)
		}
		// The server keeps working after each error.
		if res, text := callTool(t, cs, "vm_list_environments", nil); res.IsError {
			t.Fatalf("after %s: vm_list_environments failed: %s", c.tool, text)
		}
	}
}

func TestMCPListEnvironments(t *testing.T) {
	cs := connect(t)
	res, text := callTool(t, cs, "vm_list_environments", map[string]any{})
	if res.IsError {
		t.Fatal(text)
	}
	var out EnvironmentList
	b, _ := json.Marshal(res.StructuredContent)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range out.Environments {
		names = append(names, e.Name)
		if e.Installed {
			t.Errorf("%s installed in an empty state dir", e.Name)
		}
	}
	for _, want := range []string{"debian:12", "debian:12-base", "debian:12-build"} {
		if !slices.Contains(names, want) {
			t.Errorf("missing %s in %v", want, names)
		}
		if !strings.Contains(text, want) {
			t.Errorf("text does not name %s: %s", want, text)
		}
	}
}

func TestMCPReapEmpty(t *testing.T) {
	cs := connect(t)
	res, text := callTool(t, cs, "vm_reap_expired", nil)
	if res.IsError || !strings.Contains(text, "removed 0") {
		t.Fatalf("%v %s", res.IsError, text)
	}
}
