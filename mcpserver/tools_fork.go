package mcpserver

import (
	"context"
	"fmt"
	"strings"

	"github.com/pyro-mcp/pyro"
)

// forkTools fork a running workspace (workspace-full only: the contract's
// 32 tools stay the default profile).
var forkTools = []tool{
	def(tool{name: "workspace_fork", title: "Fork a running workspace", hints: openWorld,
		defaults: map[string]any{"count": 1},
		description: "Fork a running workspace count ways (1 to " + fmt.Sprint(pyro.MaxForkCount) + ") to try alternatives side by side. Each fork continues from the same instant: " +
			"the same /workspace files and the same running services, shells and background jobs (processes keep their state), with its own hostname, machine-id, MAC, randomness, network and disk; " +
			"writes in one fork never reach the source or the others. The source is paused only briefly and keeps running. Published ports, named snapshots and checkpoints are not inherited. " +
			"A workspace with secrets needs with_secrets=true (the forks get them too). Stopped or broken workspaces cannot be forked. Delete forks with workspace_delete when done."}, workspaceFork),
}

type workspaceForkIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id or name to fork (it must be running). Required."`
	Count       int    `json:"count,omitempty" jsonschema:"Number of forks, 1 to 16."`
	Name        string `json:"name,omitempty" jsonschema:"Name of the fork; with count > 1 the forks are NAME-1..NAME-N."`
	WithSecrets bool   `json:"with_secrets,omitempty" jsonschema:"Required to fork a workspace that has secrets: the forks get the same secrets."`
}

func workspaceFork(ctx context.Context, cl *call, in workspaceForkIn) (pyro.ForkResult, string, error) {
	r, err := cl.c.ForkWorkspace(ctx, in.WorkspaceID, pyro.ForkWorkspaceOptions{Count: in.Count, Name: in.Name, WithSecrets: in.WithSecrets})
	if err != nil {
		return r, "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "forked workspace %s %d way(s) (source paused %d ms):\n", r.SourceWorkspaceID, len(r.Forks), r.SourcePausedMS)
	for _, f := range r.Forks {
		fmt.Fprintf(&b, "- %s: services [%s], shells [%s]\n", f.WorkspaceID, strings.Join(f.InheritedServices, ", "), strings.Join(f.InheritedShells, ", "))
	}
	fmt.Fprintf(&b, "not inherited: %s", strings.Join(r.NotInherited, "; "))
	return r, b.String(), nil
}
