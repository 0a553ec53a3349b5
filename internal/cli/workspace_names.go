package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

// emitID prints just an id (--id-only), for `id=$(pyro ...)`; with --json
// it is a JSON string.
func (a *app) emitID(id string) error {
	return a.emit(id, func(w io.Writer) { fmt.Fprintln(w, id) })
}

// printNames adds a workspace's name and labels to its human view.
func printNames(w io.Writer, ws pyro.Workspace) {
	if ws.Name != "" {
		fmt.Fprintf(w, "name:         %s\n", ws.Name)
	}
	if len(ws.Labels) > 0 {
		fmt.Fprintf(w, "labels:       %s\n", termtext.Line(labelString(ws.Labels)))
	}
}

// labelString renders labels as k=v,k=v in key order.
func labelString(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + labels[k]
	}
	return strings.Join(parts, ",")
}

func (a *app) wsList() *cobra.Command {
	var labels []string
	cmd := &cobra.Command{
		Use:   "list [--label KEY=VALUE]...",
		Short: "List workspaces, most recently active first",
		Example: `  pyro workspace list
  pyro workspace list --label team=infra --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := pyro.ParseLabels(labels)
			if err != nil {
				return err
			}
			list, err := a.sdk.ListWorkspaces(cmd.Context(), &pyro.ListWorkspacesOptions{Labels: filter})
			if err != nil {
				return err
			}
			entries := make([]pyro.WorkspaceEntry, len(list))
			for i, ws := range list {
				entries[i] = ws.Entry()
			}
			return a.emit(map[string]any{"workspaces": entries, "count": len(entries)}, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "WORKSPACE_ID\tNAME\tSTATE\tENVIRONMENT\tCOMMANDS\tLAST_ACTIVITY\tLABELS")
				for _, e := range entries {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.WorkspaceID, orDash(e.Name), e.State, e.Environment, e.CommandCount,
						e.LastActivityAt.Local().Format("2006-01-02 15:04:05"), termtext.Line(orDash(labelString(e.Labels))))
				}
				tw.Flush()
			})
		},
	}
	cmd.Flags().StringArrayVar(&labels, "label", nil, "only workspaces with this KEY=VALUE label (repeatable: all must match)")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) wsUpdate() *cobra.Command {
	var o pyro.UpdateWorkspaceOptions
	var labels []string
	cmd := &cobra.Command{
		Use:   "update WORKSPACE [--name NAME] [--label KEY=VALUE]... [--clear-label KEY]...",
		Short: "Rename a workspace or change its labels",
		Example: `  pyro workspace update 3f2a9c1b7d4e --name api
  pyro workspace update api --label stage=review --clear-label wip`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if o.Labels, err = pyro.ParseLabels(labels); err != nil {
				return err
			}
			ws, err := a.sdk.UpdateWorkspace(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			return a.emit(ws, func(w io.Writer) { printWorkspace(w, ws) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Name, "name", "", "new name (unique among workspaces)")
	f.StringArrayVar(&labels, "label", nil, "set a KEY=VALUE label (repeatable)")
	f.StringArrayVar(&o.ClearLabels, "clear-label", nil, "remove label KEY (repeatable)")
	return cmd
}

func (a *app) wsStop() *cobra.Command {
	return &cobra.Command{
		Use:   "stop WORKSPACE",
		Short: "Flush and power off a workspace, keeping its disk, snapshots and history",
		Long: `Stops the workspace's VM after the guest flushed its disks. A stopped
workspace uses no memory or CPU (no supervisor, no VMM); its commands fail
until ` + "`pyro workspace start`" + `. Stopping a stopped workspace is an error.`,
		Example: "  pyro workspace stop api\n  pyro workspace start api",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ws, err := a.sdk.StopWorkspace(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(ws, func(w io.Writer) { fmt.Fprintf(w, "stopped workspace %s\n", ws.WorkspaceID) })
		},
	}
}

func (a *app) wsStart() *cobra.Command {
	return &cobra.Command{
		Use:     "start WORKSPACE",
		Short:   "Boot a stopped workspace on its disk",
		Example: "  pyro workspace start api",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ws, err := a.sdk.StartWorkspace(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(ws, func(w io.Writer) { printWorkspace(w, ws) })
		},
	}
}
