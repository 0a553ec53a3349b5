package pyro

import (
	"context"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Network policies. Every VM, run and workspace has one; the default is
// off (no network device at all). The contract's Network=true means egress.
//
//   - off: no NIC.
//   - egress: outbound connections, decided per connection by the
//     supervisor's network stack: never to the host itself, loopback,
//     link-local (cloud metadata) or private ranges unless an AllowHosts CIDR
//     names them.
//   - egress+published-ports: egress, and services may publish guest ports
//     on the host's loopback (StartServiceOptions.Publish).
//
// AllowHosts narrows egress to names, wildcards and CIDRs, each with an
// optional port: "pypi.org", "*.github.com:443", "10.0.0.0/8", or a preset
// ("@pypi", "@npm", "@github", "@debian"). With an allowlist the guest's DNS
// answers only allowed names, connections go only to addresses those names
// resolved to (or an allowed CIDR), and the TLS SNI / HTTP Host must match.
// An empty list is open egress.
const (
	NetworkPolicyOff                  = string(netpolicy.Off)
	NetworkPolicyEgress               = string(netpolicy.Egress)
	NetworkPolicyEgressPublishedPorts = string(netpolicy.EgressPublished)
)

// NetworkDenial is one lookup or connection the network policy refused:
// the name asked for or the address's name (host), the destination address
// and port (empty for a lookup), and why.
type NetworkDenial struct {
	Host    string `json:"host"`
	Address string `json:"address"`
	Port    int    `json:"port"`
	Reason  string `json:"reason"`
}

// denialsFrom converts the engine's denials (same fields, so a field added
// on one side stops the build); never nil.
func denialsFrom(ds []netpolicy.Denial) []NetworkDenial {
	out := make([]NetworkDenial, 0, len(ds))
	for _, d := range ds {
		out = append(out, NetworkDenial(d))
	}
	return out
}

// denialsTo is denialsFrom's inverse, for the workspace history.
func denialsTo(ds []NetworkDenial) []netpolicy.Denial {
	var out []netpolicy.Denial
	for _, d := range ds {
		out = append(out, netpolicy.Denial(d))
	}
	return out
}

// NetworkPolicies lists the policy names, narrowest first.
func NetworkPolicies() []string { return netpolicy.Modes() }

// NetworkPresets lists the allowlist presets ("@pypi", ...).
func NetworkPresets() []string { return netpolicy.PresetNames() }

// resolvePolicy merges the contract's network flag with a policy and an
// allowlist into one checked policy: network=true means egress, and
// contradicts an explicit "off".
func resolvePolicy(network bool, mode string, allowHosts []string) (netpolicy.Policy, error) {
	if network {
		switch m, err := netpolicy.ParseMode(mode); {
		case err != nil:
			return netpolicy.Policy{}, err
		case mode == "":
			mode = NetworkPolicyEgress
		case !m.Networked():
			return netpolicy.Policy{}, errdefs.New(errdefs.ErrInvalidArgument, "drop --network (network=true) or the off policy",
				"network=true contradicts network_policy %q", mode)
		}
	}
	p, err := netpolicy.Parse(mode, allowHosts)
	if err != nil {
		return p, err
	}
	return p, checkEnforceable(p)
}

// haveNetworkStack says whether this build's supervisor runs the userspace
// network stack that enforces allowlists and publishes ports (it does:
// internal/netstack). Without it such policies are refused instead of
// running with an unfiltered network.
var haveNetworkStack = true

func checkEnforceable(p netpolicy.Policy) error {
	if haveNetworkStack || (len(p.AllowHosts) == 0 && p.Mode != netpolicy.EgressPublished) {
		return nil
	}
	return errdefs.New(errdefs.ErrFailedPrecondition, "use network_policy egress without allow_hosts, or off",
		"network policy %s cannot be enforced by this pyro build (no network stack)", p)
}

// policyFields are the policy fields every record-shaped result carries.
func policyFields(rec instance.Record) (string, []string) {
	p := rec.Policy().Normalized()
	hosts := p.AllowHosts
	if hosts == nil {
		hosts = []string{}
	}
	return string(p.Mode), hosts
}

// networkControl is what a running guest's supervisor offers for its
// network (the supervisor client's methods).
type networkControl interface {
	NetworkDenials(ctx context.Context) ([]netpolicy.Denial, error)
	SetNetworkPolicy(ctx context.Context, p netpolicy.Policy) error
}

// networkControlOf returns the network control of a running guest's
// supervisor; nil when this build has none.
var networkControlOf = func(dir vmdir.Dir) networkControl { return supervisor.NewClient(dir) }

// denialsDeadline bounds the fetch of denials after a command: a slow
// supervisor must not hold up a finished command's result.
const denialsDeadline = 2 * time.Second

// takeDenials drains what the policy refused since the last call. It never
// fails: a result without denials is better than no result.
func takeDenials(ctx context.Context, dir vmdir.Dir, rec instance.Record) []NetworkDenial {
	nc := networkControlOf(dir)
	if nc == nil || !rec.Policy().Mode.Networked() {
		return []NetworkDenial{}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), denialsDeadline)
	defer cancel()
	ds, err := nc.NetworkDenials(ctx)
	if err != nil {
		return []NetworkDenial{}
	}
	return denialsFrom(ds)
}

// SetWorkspaceNetworkOptions describe a live change of a workspace's
// network policy. An empty NetworkPolicy keeps the current one; AllowHosts
// replaces the allowlist (empty: open egress).
type SetWorkspaceNetworkOptions struct {
	NetworkPolicy string
	AllowHosts    []string
}

// SetWorkspaceNetwork changes a workspace's network policy without a
// restart: a running workspace's supervisor applies it at once (connections
// and learned addresses the new policy refuses are refused from then on),
// and the record keeps it for later starts. Switching between off and a
// networked policy needs a NIC the guest has or lacks since boot, and is
// refused. Nothing changes when any step fails.
func (c *Client) SetWorkspaceNetwork(ctx context.Context, id string, opts SetWorkspaceNetworkOptions) (Workspace, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return Workspace{}, err
	}
	mode := opts.NetworkPolicy
	if mode == "" {
		mode = string(rec.Policy().Normalized().Mode)
	}
	p, err := resolvePolicy(false, mode, opts.AllowHosts)
	if err != nil {
		return Workspace{}, err
	}
	// The live change happens under the workspace's lock, before the record
	// is saved; should the save fail, the supervisor gets the old policy back.
	var live networkControl
	var old netpolicy.Policy
	err = c.lc.Update(ctx, dir, instance.KindWorkspace, func(r *instance.Record) error {
		old = r.Policy()
		if old.Mode.Networked() != p.Mode.Networked() {
			return errdefs.New(errdefs.ErrFailedPrecondition, "create a new workspace with the policy you need",
				"workspace %s has network policy %q; switching to %q needs a different network device", id, old.Normalized().Mode, p.Mode)
		}
		if c.lc.Observe(ctx, dir, *r).State == instance.Running && p.Mode.Networked() {
			nc := networkControlOf(dir)
			if nc == nil {
				return errdefs.New(errdefs.ErrFailedPrecondition, "stop the workspace and change it, or recreate it",
					"this pyro build cannot change a running workspace's network")
			}
			if err := nc.SetNetworkPolicy(ctx, p); err != nil {
				return err
			}
			live = nc
		}
		r.SetPolicy(p)
		return nil
	})
	if err != nil {
		if live != nil {
			_ = live.SetNetworkPolicy(context.WithoutCancel(ctx), old)
		}
		return Workspace{}, err
	}
	return c.StatusWorkspace(ctx, id)
}
