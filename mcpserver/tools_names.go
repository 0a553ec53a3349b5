package mcpserver

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro"
)

// namesTools find, rename, stop and start workspaces (workspace-full; the
// list also in workspace-core). Names work wherever a workspace_id does:
// the SDK resolves them.
var namesTools = []tool{
	def(tool{name: "workspace_list", title: "List workspaces", hints: readOnly,
		description: "List existing workspaces, most recently active first: id, name, labels, state, environment, command count and last activity. " +
			"Use it to find a workspace created earlier (names and labels given at workspace_create or workspace_update) instead of creating another; " +
			"labels keeps only workspaces carrying all of them."}, workspaceListTool),
	def(tool{name: "workspace_update", title: "Rename or relabel a workspace", hints: idempotent,
		description: "Give a workspace a name (unique among workspaces; usable wherever workspace_id is), set labels or clear labels. " +
			"A taken or invalid name changes nothing."}, workspaceUpdateTool),
	def(tool{name: "workspace_stop", title: "Stop a workspace", hints: destructive,
		description: "Flush and power off a workspace's VM, keeping /workspace, snapshots and history; a stopped workspace uses no memory or CPU. " +
			"Running processes, services and shells end. Commands on it fail until workspace_start. Stopping a stopped workspace is a failed_precondition error."}, workspaceStopTool),
	def(tool{name: "workspace_start", title: "Start a stopped workspace", hints: idempotent,
		description: "Boot a stopped workspace on its disk and wait until it is running. Starting a running workspace just returns its status."}, workspaceStartTool),
}

type workspaceListIn struct {
	Labels map[string]string `json:"labels,omitempty" jsonschema:"Only workspaces that carry every one of these labels (key -> value)."`
}

type workspaceUpdateIn struct {
	WorkspaceID string            `json:"workspace_id" jsonschema:"Workspace id or name. Required."`
	Name        string            `json:"name,omitempty" jsonschema:"New name: a letter or digit, then up to 63 letters, digits, '.', '_' or '-'; unique among workspaces."`
	Labels      map[string]string `json:"labels,omitempty" jsonschema:"Labels to set (key -> value); keys like names, values printable text up to 256 bytes."`
	ClearLabels []string          `json:"clear_labels,omitempty" jsonschema:"Label keys to remove."`
}

type workspaceListOut struct {
	Workspaces []pyro.WorkspaceEntry `json:"workspaces"`
	Count      int                   `json:"count"`
}

func workspaceListTool(ctx context.Context, cl *call, in workspaceListIn) (workspaceListOut, string, error) {
	if err := pyro.ValidateLabels(in.Labels); err != nil {
		return workspaceListOut{}, "", err
	}
	list, err := cl.c.ListWorkspaces(ctx, &pyro.ListWorkspacesOptions{Labels: in.Labels})
	if err != nil {
		return workspaceListOut{}, "", err
	}
	out := workspaceListOut{Workspaces: make([]pyro.WorkspaceEntry, len(list)), Count: len(list)}
	var b strings.Builder
	for i, ws := range list {
		out.Workspaces[i] = ws.Entry()
		fmt.Fprintf(&b, "%s", ws.WorkspaceID)
		if ws.Name != "" {
			fmt.Fprintf(&b, " %q", ws.Name)
		}
		fmt.Fprintf(&b, ": %s, %s, %d command(s), last active %s", ws.State, ws.Environment, ws.CommandCount, ws.LastActivityAt.Format(time.RFC3339))
		if len(ws.Labels) > 0 {
			fmt.Fprintf(&b, ", labels %v", ws.Labels)
		}
		b.WriteString("\n")
	}
	if len(list) == 0 {
		b.WriteString("no workspaces")
	}
	return out, strings.TrimSpace(b.String()), nil
}

func workspaceUpdateTool(ctx context.Context, cl *call, in workspaceUpdateIn) (pyro.Workspace, string, error) {
	ws, err := cl.c.UpdateWorkspace(ctx, in.WorkspaceID, pyro.UpdateWorkspaceOptions{Name: in.Name, Labels: in.Labels, ClearLabels: in.ClearLabels})
	return ws, renderWorkspace(ws), err
}

func workspaceStopTool(ctx context.Context, cl *call, in workspaceIDIn) (pyro.Workspace, string, error) {
	cl.p.step(ctx, "stopping workspace %s", in.WorkspaceID)
	ws, err := cl.c.StopWorkspace(ctx, in.WorkspaceID)
	return ws, renderWorkspace(ws), err
}

func workspaceStartTool(ctx context.Context, cl *call, in workspaceIDIn) (pyro.Workspace, string, error) {
	cl.p.step(ctx, "booting workspace %s", in.WorkspaceID)
	ws, err := cl.c.StartWorkspace(ctx, in.WorkspaceID)
	if err == nil {
		cl.p.step(ctx, "workspace %s is %s", ws.WorkspaceID, ws.State)
	}
	return ws, renderWorkspace(ws), err
}
