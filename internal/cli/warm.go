package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

// prepareCommand builds a golden memory snapshot ahead of time, so the
// first start of a configuration is already a restore (issue #14).
func (a *app) prepareCommand() *cobra.Command {
	var o pyro.PrepareOptions
	cmd := &cobra.Command{
		Use:   "prepare [ENVIRONMENT]",
		Short: "Build the memory snapshot that makes starts of ENVIRONMENT warm",
		Long: `Boots ENVIRONMENT once with the given resources, waits for its agent and saves
the guest's memory and device state beside the environment. Later runs, VMs and
workspaces of the same configuration are restored from it instead of booted
(results say start: warm). Without prepare, the first start of a configuration
builds the snapshot. A missing environment is an error: pull it first.`,
		Example: "  pyro prepare debian:12\n  pyro prepare --workspace debian:12\n  pyro prepare --network --mem-mib 2048 debian:12-build",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env := pyro.DefaultEnvironment
			if len(args) == 1 {
				env = args[0]
			}
			res, err := a.sdk.PrepareEnvironment(cmd.Context(), env, o)
			if err != nil {
				return err
			}
			return a.emit(res, func(w io.Writer) { printPrepared(w, res) })
		},
	}
	addPrepareFlags(cmd, &o)
	return cmd
}

func addPrepareFlags(cmd *cobra.Command, o *pyro.PrepareOptions) {
	f := cmd.Flags()
	f.IntVar(&o.VCPUCount, "vcpu-count", pyro.DefaultVCPUCount, "number of guest vCPUs of the configuration")
	f.IntVar(&o.MemMiB, "mem-mib", pyro.DefaultMemMiB, "guest memory in MiB of the configuration")
	f.BoolVar(&o.Network, "network", false, "prepare the networked configuration")
	f.BoolVar(&o.Workspace, "workspace", false, "prepare the workspace configuration (a workspace disk attached)")
}

func printPrepared(w io.Writer, res pyro.PrepareResult) {
	s := res.Snapshot
	fmt.Fprintf(w, "%s: memory snapshot %s ready (%d vCPU, %d MiB, network %s, workspace %t; %s on disk) in %.1f s\n",
		res.Environment, s.ID, s.VCPUCount, s.MemMiB, s.Network, s.Workspace, humanBytes(s.StateBytes),
		float64(res.DurationMS)/1000)
}

// printSnapshots is env inspect's list of memory snapshots.
func printSnapshots(w io.Writer, list []pyro.GoldenSnapshot) {
	if len(list) == 0 {
		fmt.Fprintf(w, "snapshots:   none (built on first start, or `pyro prepare`)\n")
		return
	}
	fmt.Fprintf(w, "snapshots:\n")
	for _, s := range list {
		line := fmt.Sprintf("  %s  %d vCPU %d MiB network=%s workspace=%t  %s", s.ID, s.VCPUCount, s.MemMiB, s.Network, s.Workspace,
			humanBytes(s.StateBytes))
		if s.Problem != "" {
			line += "  unusable: " + termtext.Line(s.Problem)
		}
		fmt.Fprintln(w, line)
	}
}
