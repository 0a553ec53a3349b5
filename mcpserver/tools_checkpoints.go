package mcpserver

import (
	"context"
	"fmt"
	"strings"

	"github.com/pyro-mcp/pyro"
)

// checkpointsTools list checkpoints and undo: MCP-created workspaces take a
// checkpoint of /workspace before every command, push, file write, patch
// and service start (see pyro.UndoWorkspace).
var checkpointsTools = []tool{
	def(tool{name: "workspace_checkpoints", title: "List a workspace's checkpoints", hints: readOnly,
		description: "List the checkpoints taken before each command in a workspace: number, command, created_at and bytes_changed (the size of the files that command touched; -1 for the latest). " +
			"Use a number with workspace_undo, or with workspace_diff_since to see what one command changed."}, workspaceCheckpoints),
	def(tool{name: "workspace_undo", title: "Undo commands in a workspace", hints: destructive,
		description: "Return /workspace to the state before the last command, or before checkpoint `to`'s command. " +
			"Like workspace_reset it recreates the sandbox: services and shells end. That checkpoint and later ones are dropped."}, workspaceUndo),
	def(tool{name: "workspace_diff_since", title: "What changed since a checkpoint", hints: readOnly,
		description: "Name the paths (added, modified, deleted) the commands since checkpoint `since` touched; names only, no content. " +
			"With the latest checkpoint's number it shows exactly what the last command changed."}, workspaceDiffSince),
}

type workspaceUndoIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	To          int    `json:"to,omitempty" jsonschema:"Checkpoint number to return to (the state before its command); 0 or absent: the latest."`
}

type workspaceDiffSinceIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Since       int    `json:"since" jsonschema:"Checkpoint number. Required."`
}

type checkpointList struct {
	WorkspaceID string            `json:"workspace_id"`
	Checkpoints []pyro.Checkpoint `json:"checkpoints"`
}

func workspaceCheckpoints(ctx context.Context, cl *call, in workspaceIDIn) (checkpointList, string, error) {
	list, err := cl.c.ListCheckpoints(ctx, in.WorkspaceID)
	if err != nil {
		return checkpointList{}, "", err
	}
	var b strings.Builder
	for _, cp := range list {
		fmt.Fprintf(&b, "%d %s %s (changed %d bytes)\n", cp.Number, cp.CreatedAt.Format("15:04:05"), cp.Command, cp.BytesChanged)
	}
	if len(list) == 0 {
		b.WriteString("(no checkpoints yet)\n")
	}
	return checkpointList{WorkspaceID: in.WorkspaceID, Checkpoints: list}, b.String(), nil
}

func workspaceUndo(ctx context.Context, cl *call, in workspaceUndoIn) (pyro.UndoResult, string, error) {
	if in.To < 0 {
		return pyro.UndoResult{}, "", fmt.Errorf("to must be a checkpoint number, not %d", in.To)
	}
	r, err := cl.c.UndoWorkspace(ctx, in.WorkspaceID, in.To)
	if err != nil {
		return r, "", err
	}
	return r, fmt.Sprintf("restored checkpoint %d: /workspace is as it was before %q", r.Checkpoint, r.Command), nil
}

func workspaceDiffSince(ctx context.Context, cl *call, in workspaceDiffSinceIn) (pyro.WorkspaceDiff, string, error) {
	d, err := cl.c.DiffWorkspaceSince(ctx, in.WorkspaceID, in.Since)
	return d, renderDiff(d), err
}
