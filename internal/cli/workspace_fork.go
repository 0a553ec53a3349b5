package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

func (a *app) wsFork() *cobra.Command {
	var o pyro.ForkWorkspaceOptions
	cmd := &cobra.Command{
		Use:   "fork WORKSPACE",
		Short: "Fork a running workspace N ways: same files, services and shells, own identity",
		Long: `Saves the running workspace whole (memory, devices and /workspace at one
instant; the source is paused only for the last changes and the disk copy,
then resumes) and starts --count new workspaces that continue from that
instant: the same files, the same running services, shells and background
jobs, each with its own hostname, machine-id, MAC, fresh randomness, network
and disk. Published ports, named snapshots and checkpoints are not
inherited. A workspace with secrets is forked only with --with-secrets.
Only a running workspace can be forked (at most ` + fmt.Sprint(pyro.MaxForkCount) + ` forks at once).`,
		Example: `  pyro workspace fork api
  pyro workspace fork api --count 4 --name try   # try-1 .. try-4
  pyro workspace fork api --json | jq -r '.forks[].workspace_id'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := a.sdk.ForkWorkspace(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) { printFork(w, r) })
		},
	}
	cmd.Flags().IntVar(&o.Count, "count", 1, fmt.Sprintf("number of forks (1 to %d)", pyro.MaxForkCount))
	cmd.Flags().StringVar(&o.Name, "name", "", "name of the fork (with --count N: NAME-1..NAME-N)")
	cmd.Flags().BoolVar(&o.WithSecrets, "with-secrets", false, "fork a workspace that has secrets (the forks get them too)")
	return cmd
}

func printFork(w io.Writer, r pyro.ForkResult) {
	fmt.Fprintf(w, "forked workspace %s %d way(s) in %d ms (source paused %d ms)\n", r.SourceWorkspaceID, len(r.Forks), r.DurationMS, r.SourcePausedMS)
	for _, f := range r.Forks {
		name := ""
		if f.Name != "" {
			name = " (" + f.Name + ")"
		}
		// The names and ids are what the source's guest told (its identity
		// frame): shown as text, never as its escape sequences.
		fmt.Fprintf(w, "  %s%s: services [%s], shells [%s]\n", f.WorkspaceID, name,
			termtext.Line(strings.Join(f.InheritedServices, ", ")), termtext.Line(strings.Join(f.InheritedShells, ", ")))
	}
	fmt.Fprintf(w, "not inherited: %s\n", strings.Join(r.NotInherited, "; "))
}
