package mcpserver

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/google/jsonschema-go/jsonschema"
)

// walkJSON calls f on every object in v.
func walkJSON(v any, path string, f func(path string, m map[string]any)) {
	switch x := v.(type) {
	case map[string]any:
		f(path, x)
		for k, e := range x {
			walkJSON(e, path+"/"+k, f)
		}
	case []any:
		for i, e := range x {
			walkJSON(e, path+"/"+itoa(i), f)
		}
	}
}

// TestToolSchemasSingleTyped: no input or output schema of any tool uses
// a type list (strict clients warn on `"type": ["null", X]`); outputs that
// may be null say so with anyOf, and still validate null and a value.
func TestToolSchemasSingleTyped(t *testing.T) {
	cs := connect(t)
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	anyOfs := 0
	for _, tool := range res.Tools {
		for kind, s := range map[string]any{"input": tool.InputSchema, "output": tool.OutputSchema} {
			b, _ := json.Marshal(s)
			var v any
			_ = json.Unmarshal(b, &v)
			walkJSON(v, tool.Name+" "+kind, func(path string, m map[string]any) {
				if _, ok := m["type"].([]any); ok {
					t.Errorf("%s: type list %v", path, m["type"])
				}
				if _, ok := m["anyOf"]; ok {
					anyOfs++
					if kind == "input" {
						t.Errorf("%s: anyOf in an input schema", path)
					}
				}
			})
		}
	}
	if anyOfs == 0 {
		t.Fatal("no output schema admits null: the rewrite lost them")
	}
	for _, tool := range res.Tools {
		if tool.Name != "service_status" {
			continue
		}
		b, _ := json.Marshal(tool.OutputSchema)
		var s jsonschema.Schema
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		exit := s.Properties["exit_code"]
		if exit == nil {
			t.Fatal("service_status has no exit_code")
		}
		r, err := exit.Resolve(nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range []any{nil, 3} {
			if err := r.Validate(v); err != nil {
				t.Errorf("exit_code %v: %v", v, err)
			}
		}
		if r.Validate("three") == nil {
			t.Error(`exit_code "three" validated`)
		}
	}
}
