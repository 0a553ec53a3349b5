package mcpserver

import (
	"slices"

	"github.com/google/jsonschema-go/jsonschema"
)

// nullables rewrites every schema that admits null through a type list
// (`"type": ["null", X]`, what jsonschema.For makes of a pointer, slice or
// map), recursively: strict clients (the MCP Inspector's --strict, model
// APIs with strict tool schemas) accept only a single type per schema.
//   - In an output schema (keepNull) it becomes
//     `"anyOf": [{"type": X, ...}, {"type": "null"}]`, which validates the
//     same values: results do carry null (a service's exit_code before it
//     exits).
//   - In an input schema it becomes `"type": X`: an optional input is
//     left out, never sent as null.
func nullables(s *jsonschema.Schema, keepNull bool) {
	if s == nil {
		return
	}
	for _, p := range s.Properties {
		nullables(p, keepNull)
	}
	nullables(s.Items, keepNull)
	nullables(s.AdditionalProperties, keepNull)
	for _, a := range s.AnyOf {
		nullables(a, keepNull)
	}
	if s.Type != "" || len(s.Types) != 2 || !slices.Contains(s.Types, "null") {
		return
	}
	if !keepNull {
		s.Type = s.Types[0]
		if s.Type == "null" {
			s.Type = s.Types[1]
		}
		s.Types = nil
		return
	}
	inner := *s
	inner.Types = nil
	inner.Type = s.Types[0]
	if inner.Type == "null" {
		inner.Type = s.Types[1]
	}
	// The description and default stay on the outer schema, where clients
	// look for them.
	inner.Description, inner.Default, inner.Title = "", nil, ""
	*s = jsonschema.Schema{
		Title:       s.Title,
		Description: s.Description,
		Default:     s.Default,
		AnyOf:       []*jsonschema.Schema{&inner, {Type: "null"}},
	}
}
