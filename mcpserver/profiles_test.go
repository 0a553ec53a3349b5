package mcpserver

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// coreForbidden are input properties workspace-core must not offer: they
// belong to secrets, network, host compatibility, shells, services,
// snapshots and disk tools.
var coreForbidden = []string{"secrets", "secret_env", "network", "network_policy", "allow_host", "allow_host_compat", "published_ports",
	"shell_id", "service_name", "snapshot", "snapshot_name", "disk"}

// TestProfiles: the default lists exactly the contract, workspace-full is
// the contract then every extension, vm-run is vm_run alone, and
// workspace-core has the workspace basics with narrow schemas. Each
// profile is checked through a real MCP session's tools/list.
func TestProfiles(t *testing.T) {
	var extNames []string
	for _, ext := range extensions {
		for _, tl := range ext {
			extNames = append(extNames, tl.name)
		}
	}
	basics := []string{"workspace_create", "workspace_status", "workspace_exec", "workspace_diff", "workspace_reset", "workspace_export", "workspace_delete"}
	for _, c := range []struct {
		profile Profile
		check   func(t *testing.T, names []string)
	}{
		{ProfileContract, func(t *testing.T, names []string) {
			if !slices.Equal(names, ToolNames()) || len(names) != 32 {
				t.Fatalf("default profile: got %v, want the 32 contract tools %v", names, ToolNames())
			}
		}},
		{ProfileWorkspaceFull, func(t *testing.T, names []string) {
			if !slices.Equal(names[:len(table)], ToolNames()) {
				t.Fatalf("workspace-full must start with the contract's tools in order: %v", names)
			}
			if !slices.Equal(names[len(table):], extNames) {
				t.Fatalf("workspace-full extensions: got %v, want %v", names[len(table):], extNames)
			}
			for _, n := range extNames {
				if slices.Contains(ToolNames(), n) {
					t.Errorf("extension %s shadows a contract tool", n)
				}
			}
		}},
		{ProfileVMRun, func(t *testing.T, names []string) {
			if !slices.Equal(names, []string{"vm_run"}) {
				t.Fatalf("vm-run: %v", names)
			}
		}},
		{ProfileWorkspaceCore, func(t *testing.T, names []string) {
			for _, b := range basics {
				if !slices.Contains(names, b) {
					t.Errorf("workspace-core lacks %s", b)
				}
			}
			for _, n := range names {
				if !slices.Contains(coreTools, n) {
					t.Errorf("workspace-core serves %s, which is not in coreTools", n)
				}
			}
		}},
	} {
		t.Run(string(c.profile)+"/", func(t *testing.T) {
			names, err := ProfileToolNames(c.profile)
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, names)
			tools, _ := toolsFor(c.profile)
			cs := connectWith(t, Options{Profile: c.profile}, tools, nil)
			res, err := cs.ListTools(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			var listed []string
			for _, tl := range res.Tools {
				listed = append(listed, tl.Name)
				if c.profile != ProfileWorkspaceCore {
					continue
				}
				for p := range schemaOf(t, tl.InputSchema).Properties {
					if slices.Contains(coreForbidden, p) {
						t.Errorf("workspace-core %s offers %q", tl.Name, p)
					}
				}
			}
			if !slices.Equal(slices.Sorted(slices.Values(listed)), slices.Sorted(slices.Values(names))) {
				t.Fatalf("tools/list %v, profile %v", listed, names)
			}
			// Tool-like words in the profile's instructions name its tools.
			known := names
			if c.profile == ProfileWorkspaceCore {
				known = coreTools
			}
			args := map[string]bool{"seed_path": true, "secret_env": true, "exit_code": true, "vcpu_count": true, "mem_mib": true,
				"timeout_seconds": true, "allow_host_compat": true, "source_path": true, "file_path": true, "output_path": true}
			for _, w := range regexp.MustCompile(`\b(vm|workspace|snapshot|service|shell)_[a-z_]*\*?`).FindAllString(instructionsFor(c.profile), -1) {
				if args[w] || strings.HasSuffix(w, "_*") {
					continue
				}
				if !slices.Contains(known, w) {
					t.Errorf("instructions of %q name %s, which that profile does not serve", c.profile, w)
				}
			}
		})
	}
}

// TestProfileUnknown: a profile name outside the list is a clear
// invalid_argument error naming the choices.
func TestProfileUnknown(t *testing.T) {
	c, err := pyro.New(pyro.Options{StateDir: t.TempDir(), Binary: "/nonexistent/pyro"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(c, Options{Profile: "everything"})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "workspace-core") {
		t.Fatalf("unknown profile: %v", err)
	}
	for _, p := range append([]Profile{""}, Profiles...) {
		if _, err := New(c, Options{Profile: p}); err != nil {
			t.Errorf("profile %q: %v", p, err)
		}
	}
}

// TestCoreRefusesWideArguments: workspace-core's narrow schemas refuse the
// arguments they leave out, as invalid_argument, before anything runs.
func TestCoreRefusesWideArguments(t *testing.T) {
	tools, _ := toolsFor(ProfileWorkspaceCore)
	cs := connectWith(t, Options{Profile: ProfileWorkspaceCore}, tools, nil)
	for _, c := range []struct {
		tool string
		args map[string]any
	}{
		{"workspace_create", map[string]any{"network": true}},
		{"workspace_create", map[string]any{"secrets": []any{map[string]any{"name": "A", "value": "b"}}}},
		{"workspace_exec", map[string]any{"workspace_id": "w", "command": "true", "secret_env": map[string]any{"A": ""}}},
		{"workspace_reset", map[string]any{"workspace_id": "w", "snapshot": "s1"}},
	} {
		res, text := callTool(t, cs, c.tool, c.args)
		if !res.IsError || !strings.HasPrefix(text, "invalid_argument: ") {
			t.Errorf("%s %v: isError=%v %q", c.tool, c.args, res.IsError, text)
		}
	}
}
