package mcpserver

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestMCPToolSchemasBoundedAndAnnotated walks every listed tool, as a
// client sees it: a title and all four annotation hints, stated
// truthfully, and every numeric input (nested ones too) bounded with its
// default inside the bounds; fixed vocabularies carry an enum.
func TestMCPToolSchemasBoundedAndAnnotated(t *testing.T) {
	cs := connect(t)
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Stated here independently of the table.
	destructiveTools := []string{"vm_exec", "vm_stop", "vm_delete", "vm_reap_expired", "workspace_sync_push", "snapshot_delete",
		"workspace_reset", "service_stop", "shell_signal", "shell_close", "workspace_delete"}
	openTools := []string{"vm_run", "vm_create", "workspace_create", "vm_exec", "workspace_exec", "service_start", "shell_write"}
	enumProps := map[string]bool{"signal_name": false, "type": false}
	for _, tool := range res.Tools {
		if tool.Title == "" {
			t.Errorf("%s: no title", tool.Name)
		}
		a := tool.Annotations
		if a == nil || a.Title == "" || a.DestructiveHint == nil || a.OpenWorldHint == nil {
			t.Errorf("%s: annotations incomplete: %+v", tool.Name, a)
			continue
		}
		verb := tool.Name[strings.LastIndex(tool.Name, "_")+1:]
		wantRO := slices.Contains([]string{"list", "status", "logs", "read", "diff", "info", "environments"}, verb)
		if a.ReadOnlyHint != wantRO {
			t.Errorf("%s: readOnlyHint %v, want %v", tool.Name, a.ReadOnlyHint, wantRO)
		}
		if wantRO && !a.IdempotentHint {
			t.Errorf("%s: read-only but not idempotent", tool.Name)
		}
		if got, want := *a.DestructiveHint, slices.Contains(destructiveTools, tool.Name); got != want {
			t.Errorf("%s: destructiveHint %v, want %v", tool.Name, got, want)
		}
		if got, want := *a.OpenWorldHint, slices.Contains(openTools, tool.Name); got != want {
			t.Errorf("%s: openWorldHint %v, want %v", tool.Name, got, want)
		}
		raw, err := json.Marshal(tool.InputSchema)
		if err != nil {
			t.Fatal(err)
		}
		var s jsonschema.Schema
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		walkProps(&s, tool.Name, func(path, name string, p *jsonschema.Schema) {
			if _, ok := enumProps[name]; ok {
				enumProps[name] = true
				if len(p.Enum) == 0 {
					t.Errorf("%s: no enum", path)
				}
				if p.Default != nil {
					var d any
					_ = json.Unmarshal(p.Default, &d)
					if !slices.Contains(p.Enum, d) {
						t.Errorf("%s: default %s not in enum %v", path, p.Default, p.Enum)
					}
				}
			}
			if !isNumeric(p) {
				return
			}
			if p.Minimum == nil || p.Maximum == nil || *p.Minimum > *p.Maximum {
				t.Errorf("%s: numeric without bounds (min %v, max %v)", path, p.Minimum, p.Maximum)
				return
			}
			if p.Default != nil {
				var d float64
				if err := json.Unmarshal(p.Default, &d); err != nil || d < *p.Minimum || d > *p.Maximum {
					t.Errorf("%s: default %s outside [%v, %v]", path, p.Default, *p.Minimum, *p.Maximum)
				}
			}
		})
	}
	for name, seen := range enumProps {
		if !seen {
			t.Errorf("no tool has property %q", name)
		}
	}
	// Spot-check the ranges the brief states.
	for _, tool := range res.Tools {
		if tool.Name != "vm_run" {
			continue
		}
		raw, _ := json.Marshal(tool.InputSchema)
		var s jsonschema.Schema
		_ = json.Unmarshal(raw, &s)
		for prop, want := range map[string][2]float64{"vcpu_count": {1, 64}, "mem_mib": {128, 65536}, "ttl_seconds": {0, 30 * 86400}} {
			p := s.Properties[prop]
			if p == nil || p.Minimum == nil || p.Maximum == nil || *p.Minimum != want[0] || *p.Maximum != want[1] {
				t.Errorf("vm_run.%s: bounds %+v, want %v", prop, p, want)
			}
		}
	}
}

// walkProps calls f on every property of s, nested ones included.
func walkProps(s *jsonschema.Schema, path string, f func(path, name string, p *jsonschema.Schema)) {
	if s == nil {
		return
	}
	for name, p := range s.Properties {
		f(path+"."+name, name, p)
		walkProps(p, path+"."+name, f)
	}
	walkProps(s.Items, path+"[]", f)
	walkProps(s.AdditionalProperties, path+"{}", f)
}

// TestMCPConstrainRefusesUnboundedNumber: a new numeric input without an
// entry in bounds stops the server from registering the tool.
func TestMCPConstrainRefusesUnboundedNumber(t *testing.T) {
	type in struct {
		Nested struct {
			Frobs int `json:"frobs"`
		} `json:"nested"`
	}
	s, err := jsonschema.For[in](nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := constrain(s); err == nil || !strings.Contains(err.Error(), "frobs") {
		t.Fatalf("constrain = %v, want an error naming frobs", err)
	}
}

// TestMCPOutOfBoundsInputRefused: the bounds are enforced, not just shown.
func TestMCPOutOfBoundsInputRefused(t *testing.T) {
	cs := connect(t)
	for _, args := range []map[string]any{
		{"command": "true", "vcpu_count": 65},
		{"command": "true", "mem_mib": 64},
		{"command": "true", "ttl_seconds": -1},
	} {
		res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "vm_run", Arguments: args})
		if err != nil {
			continue // a protocol error is a refusal too
		}
		text := ""
		if len(res.Content) > 0 {
			if tc, ok := res.Content[0].(*mcp.TextContent); ok {
				text = tc.Text
			}
		}
		// Refused by the schema, before any backend is asked.
		if !res.IsError || !(strings.Contains(text, "minimum") || strings.Contains(text, "maximum")) {
			t.Errorf("vm_run %v: not refused by the schema: %q", args, text)
		}
	}
}
