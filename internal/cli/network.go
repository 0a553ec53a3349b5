package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

// networkFlags adds --network-policy and --allow-host (the contract's
// --network stays beside them and means egress).
func networkFlags(f *pflag.FlagSet, policy *string, hosts *[]string) {
	f.StringVar(policy, "network-policy", "", "network policy: "+strings.Join(pyro.NetworkPolicies(), ", ")+
		" (default off: no NIC; --network means egress)")
	f.StringArrayVar(hosts, "allow-host", nil, "with egress, allow only NAME, *.SUFFIX or CIDR, each with an optional :PORT, or a preset ("+
		strings.Join(pyro.NetworkPresets(), " ")+"); repeatable")
}

// policyText is the policy as a person reads it: "egress (pypi.org, @github)".
func policyText(policy string, hosts []string) string {
	if len(hosts) == 0 {
		return policy
	}
	return policy + " (" + strings.Join(hosts, ", ") + ")"
}

// printDenials writes what the network policy refused, one line each;
// hosts come from the guest and are cleaned for the terminal.
func printDenials(w io.Writer, prefix string, ds []pyro.NetworkDenial) {
	for _, d := range ds {
		what := termtext.Line(d.Host)
		if d.Address != "" {
			addr := d.Address + ":" + strconv.Itoa(d.Port)
			if strings.Contains(d.Address, ":") {
				addr = "[" + d.Address + "]:" + strconv.Itoa(d.Port)
			}
			if what != "" {
				what += " "
			}
			what += addr
		}
		if what != "" {
			what += ": "
		}
		fmt.Fprintf(w, "%snetwork denied: %s%s\n", prefix, what, termtext.Line(d.Reason))
	}
}

func (a *app) wsNetwork() *cobra.Command {
	cmd := &cobra.Command{Use: "network", Short: "Change a workspace's network policy"}
	var o pyro.SetWorkspaceNetworkOptions
	set := &cobra.Command{
		Use:   "set WORKSPACE_ID [--network-policy POLICY] [--allow-host ENTRY]...",
		Short: "Replace a workspace's allowlist (and policy) live, without a restart",
		Long: `Replace a workspace's network allowlist, and its policy when --network-policy is
given (egress <-> egress+published-ports). A running workspace applies it at
once: lookups and connections the new policy refuses are refused from then on.
No --allow-host means open egress. Switching between off and a networked policy
is refused: the guest's network device is fixed at creation.`,
		Example: `  pyro workspace network set 3f2a9c1b7d4e --allow-host @pypi --allow-host '*.github.com:443'
  pyro workspace network set 3f2a9c1b7d4e --network-policy egress     # open egress again`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ws, err := a.sdk.SetWorkspaceNetwork(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			return a.emit(ws, func(w io.Writer) {
				fmt.Fprintf(w, "workspace %s: network %s\n", ws.WorkspaceID, policyText(ws.NetworkPolicy, ws.AllowHosts))
			})
		},
	}
	networkFlags(set.Flags(), &o.NetworkPolicy, &o.AllowHosts)
	cmd.AddCommand(set)
	return cmd
}
