package cli

import (
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro/internal/termtext"
)

// wsCheckpointCommand is `pyro workspace checkpoint list`.
func (a *app) wsCheckpointCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "checkpoint", Short: "List the checkpoints taken before each command (workspaces made with --checkpoints)"}
	cmd.AddCommand(&cobra.Command{
		Use:     "list WORKSPACE_ID",
		Short:   "List checkpoints: number, command, time, bytes the command changed",
		Example: "  pyro workspace checkpoint list 3f2a9c1b7d4e",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			list, err := a.sdk.ListCheckpoints(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(map[string]any{"workspace_id": args[0], "checkpoints": list}, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "N\tCREATED\tCHANGED\tCOMMAND")
				for _, cp := range list {
					changed := "-"
					if cp.BytesChanged >= 0 {
						changed = humanBytes(cp.BytesChanged)
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", cp.Number, cp.CreatedAt.Format("2006-01-02 15:04:05"), changed, termtext.Line(cp.Command))
				}
				tw.Flush()
			})
		},
	})
	return cmd
}

// wsUndo is `pyro workspace undo ID [--to N]`.
func (a *app) wsUndo() *cobra.Command {
	var to int
	cmd := &cobra.Command{
		Use:   "undo WORKSPACE_ID [--to N]",
		Short: "Return /workspace to the state before the last command (or before checkpoint N's command)",
		Long: `Undo recreates the sandbox like reset (services and shells are gone) with
/workspace as it was at the checkpoint; that checkpoint and later ones are dropped.`,
		Example: "  pyro workspace undo 3f2a9c1b7d4e\n  pyro workspace undo 3f2a9c1b7d4e --to 3",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to < 0 {
				return fmt.Errorf("--to must be a checkpoint number, got %s", strconv.Itoa(to))
			}
			r, err := a.sdk.UndoWorkspace(cmd.Context(), args[0], to)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				fmt.Fprintf(w, "restored checkpoint %d (before: %s)\n", r.Checkpoint, termtext.Line(r.Command))
			})
		},
	}
	cmd.Flags().IntVar(&to, "to", 0, "checkpoint number to return to (default: the newest)")
	return cmd
}
