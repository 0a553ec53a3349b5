package mcpserver

import (
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro"
)

// A pinned server refuses any request wider than its maximum, before
// anything is created; a request inside it gets past the check (and then
// fails for this test's missing environment, not for its network).
func TestMCPNetworkPinned(t *testing.T) {
	cs := connectWith(t, Options{NetworkPolicyMax: "egress", AllowHostsMax: []string{"*.example.com:443", "@pypi"}}, append(table, networkTools...), nil)
	wider := []struct {
		tool string
		args map[string]any
	}{
		{"vm_run", map[string]any{"command": "true", "network": true}}, // open egress is wider than a list
		{"vm_run", map[string]any{"command": "true", "network_policy": "egress+published-ports", "allow_hosts": []string{"pypi.org"}}},
		{"vm_create", map[string]any{"network_policy": "egress", "allow_hosts": []string{"evil.net"}}},
		{"vm_create", map[string]any{"network_policy": "egress", "allow_hosts": []string{"a.example.com"}}}, // any port > :443
		{"workspace_create", map[string]any{"network_policy": "egress", "allow_hosts": []string{"127.0.0.1"}}},
		{"workspace_network_set", map[string]any{"workspace_id": "abc", "network_policy": "egress", "allow_hosts": []string{"@npm"}}},
	}
	for _, c := range wider {
		res, text := callTool(t, cs, c.tool, c.args)
		if !res.IsError || !strings.HasPrefix(text, "invalid_argument:") || !strings.Contains(text, "at most egress (*.example.com:443, @pypi)") {
			t.Errorf("%s %v: %q, want invalid_argument naming the max", c.tool, c.args, text)
		}
	}
	for _, args := range []map[string]any{
		{"command": "true"}, // off is always within
		{"command": "true", "network_policy": "egress", "allow_hosts": []string{"files.example.com:443", "pypi.org"}},
	} {
		_, text := callTool(t, cs, "vm_run", args)
		if strings.Contains(text, "at most") || strings.HasPrefix(text, "invalid_argument") {
			t.Errorf("vm_run %v refused for its network: %q", args, text)
		}
	}
}

// Without a configured maximum the model may ask for egress, but never for
// a protected range.
func TestMCPNetworkDefaultMax(t *testing.T) {
	cs := connect(t)
	for _, hosts := range [][]string{{"127.0.0.1:8080"}, {"10.0.0.0/8"}, {"169.254.169.254"}, {"[::1]:80"}, {"[::ffff:127.0.0.1/128]:80"}} {
		res, text := callTool(t, cs, "vm_create", map[string]any{"network_policy": "egress", "allow_hosts": hosts})
		if !res.IsError || !strings.HasPrefix(text, "invalid_argument:") || !strings.Contains(text, "protected range") {
			t.Errorf("allow_hosts %v: %q", hosts, text)
		}
	}
	res, text := callTool(t, cs, "vm_create", map[string]any{"network": true, "network_policy": "off"})
	if !res.IsError || !strings.HasPrefix(text, "invalid_argument:") {
		t.Errorf("network with policy off: %q", text)
	}
	res, text = callTool(t, cs, "vm_create", map[string]any{"network_policy": "egress+published-ports"})
	if !res.IsError || !strings.Contains(text, "wider than the maximum") {
		t.Errorf("published ports beyond the default max: %q", text)
	}
	res, text = callTool(t, cs, "vm_create", map[string]any{"network_policy": "everything"})
	if !res.IsError || !strings.HasPrefix(text, "invalid_argument:") {
		t.Errorf("unknown policy: %q", text)
	}
}

func TestMCPNetworkMaxChecked(t *testing.T) {
	c, err := pyro.New(pyro.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(c, Options{NetworkPolicyMax: "egress", AllowHostsMax: []string{"*.com"}}); err == nil {
		t.Fatal("a bad maximum was accepted")
	}
}
