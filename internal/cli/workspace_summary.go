package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

func (a *app) wsSummary() *cobra.Command {
	return &cobra.Command{
		Use:   "summary WORKSPACE_ID",
		Short: "Review a workspace: commands and exit codes, changed files, services, snapshots, writes, patches, syncs, exports",
		Example: `  pyro workspace summary $id
  pyro workspace summary $id --json | jq '.commands[] | select(.exit_code != 0)'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := a.sdk.SummarizeWorkspace(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(s, func(w io.Writer) { printSummary(w, s) })
		},
	}
}

func printSummary(w io.Writer, s pyro.WorkspaceSummary) {
	title := s.WorkspaceID
	if s.Name != "" {
		title += " (" + termtext.Line(s.Name) + ")"
	}
	fmt.Fprintf(w, "workspace %s: %s, %s, %d reset(s)\n", title, s.State, s.Environment, s.ResetCount)
	fmt.Fprintf(w, "commands: %d run, %d failed\n", s.CommandCount, s.FailedCommandCount)
	for _, c := range s.Commands {
		fmt.Fprintf(w, "  #%d exit %d (%d ms) %s\n", c.Seq, c.ExitCode, c.DurationMS, termtext.Line(strings.Join(c.Command, " ")))
	}
	if s.ChangesNote != "" {
		fmt.Fprintf(w, "changes: (%s)\n", termtext.Line(s.ChangesNote))
	} else {
		fmt.Fprintf(w, "changes since the baseline: %d\n", s.ChangeCount)
		for _, c := range s.Changes {
			mark := map[string]string{"added": "A", "modified": "M", "deleted": "D"}[c.Status]
			fmt.Fprintf(w, "  %s %s\n", mark, termtext.Line(c.Path))
		}
	}
	if len(s.Services) > 0 {
		fmt.Fprintln(w, "services:")
		for _, sv := range s.Services {
			fmt.Fprintf(w, "  %s %s\n", termtext.Line(sv.Name), termtext.Line(sv.State))
		}
	}
	if len(s.Snapshots) > 0 {
		fmt.Fprintf(w, "snapshots: %s\n", termtext.Line(strings.Join(s.Snapshots, ", ")))
	}
	if s.EventCount > 0 {
		fmt.Fprintf(w, "events: %d\n", s.EventCount)
		for _, e := range s.Events {
			what := e.Path
			if len(e.Paths) > 0 {
				what = strings.Join(e.Paths, ", ")
			}
			if e.Target != "" {
				what += " <-> " + e.Target
			}
			fmt.Fprintf(w, "  %s %s %s\n", e.At.Format("15:04:05"), e.Kind, termtext.Line(what))
		}
	}
}
