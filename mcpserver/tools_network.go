package mcpserver

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
)

// Network policies over MCP. The model is untrusted: whatever it asks for
// (network, network_policy, allow_hosts on vm_run, vm_create,
// workspace_create and workspace_network_set) must lie within the maximum
// the person who started the server set (Options.NetworkPolicyMax,
// AllowHostsMax). A request may only narrow it; without a configured
// maximum the model may ask for egress with any allowlist, but may never
// open loopback, private, link-local or this host's addresses.

// networkTools are the live network tools (workspace-full).
var networkTools = []tool{
	def(tool{name: "workspace_network_set", title: "Change a workspace's network allowlist", hints: idempotent,
		description: "Replace a workspace's network allowlist (allow_hosts: NAME, *.SUFFIX or CIDR, each with an optional :PORT, or a preset " +
			strings.Join(pyro.NetworkPresets(), " ") + ") and, when given, its network_policy (egress <-> egress+published-ports), live without a restart. " +
			"An empty allow_hosts means open egress. Use it after network_denials show what a command needed. Switching to or from off is refused."},
		workspaceNetworkSet),
}

type workspaceNetworkSetIn struct {
	WorkspaceID   string   `json:"workspace_id" jsonschema:"Workspace id. Required."`
	NetworkPolicy string   `json:"network_policy,omitempty" jsonschema:"New network policy; omitted keeps the current one."`
	AllowHosts    []string `json:"allow_hosts,omitempty" jsonschema:"The new allowlist, replacing the old one; empty means open egress."`
}

// maxPolicy is the server's network maximum, checked once by New.
func maxPolicy(o Options) (netpolicy.Policy, error) {
	mode := o.NetworkPolicyMax
	if mode == "" {
		mode = string(netpolicy.Egress)
	}
	p, err := netpolicy.Parse(mode, o.AllowHostsMax)
	if err != nil {
		return p, fmt.Errorf("network policy maximum: %w", err)
	}
	return p, nil
}

// network checks a tool call's network request against the server's
// maximum; network=true means egress, as in the SDK.
func (cl *call) network(network bool, mode string, hosts []string) error {
	if network && mode == "" {
		mode = string(netpolicy.Egress)
	}
	p, err := netpolicy.Parse(mode, hosts)
	if err != nil {
		return err
	}
	return p.Within(cl.netMax)
}

func workspaceNetworkSet(ctx context.Context, cl *call, in workspaceNetworkSetIn) (pyro.Workspace, string, error) {
	mode := in.NetworkPolicy
	if mode == "" {
		ws, err := cl.c.StatusWorkspace(ctx, in.WorkspaceID)
		if err != nil {
			return ws, "", err
		}
		mode = ws.NetworkPolicy
	}
	if err := cl.network(false, mode, in.AllowHosts); err != nil {
		return pyro.Workspace{}, "", err
	}
	ws, err := cl.c.SetWorkspaceNetwork(ctx, in.WorkspaceID, pyro.SetWorkspaceNetworkOptions{NetworkPolicy: in.NetworkPolicy, AllowHosts: in.AllowHosts})
	if err != nil {
		return ws, "", err
	}
	return ws, fmt.Sprintf("workspace %s: network %s", ws.WorkspaceID, renderPolicy(ws.NetworkPolicy, ws.AllowHosts)), nil
}

func renderPolicy(mode string, hosts []string) string {
	if len(hosts) == 0 {
		return mode
	}
	return mode + " (" + strings.Join(hosts, ", ") + ")"
}

// withDenials appends what the network policy refused to a result's text,
// so a model sees why a download failed and which entry to ask for.
func withDenials(text string, ds []pyro.NetworkDenial) string {
	for _, d := range ds {
		what := d.Host
		if d.Address != "" {
			if what != "" {
				what += " "
			}
			what += d.Address + ":" + strconv.Itoa(d.Port)
		}
		if what != "" {
			what += ": "
		}
		text += "\nnetwork denied: " + what + d.Reason
	}
	return text
}
