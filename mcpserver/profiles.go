package mcpserver

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Profile names the set of tools a server lists (`pyro mcp serve
// --profile`). Profiles exist because a model given 50 tools chooses worse
// than one given the dozen its job needs, and because a host may want to
// offer only throwaway VMs.
type Profile string

const (
	// ProfileContract, the empty profile (`mcp serve` without --profile),
	// is exactly the public contract's 32 tools in contract order: the
	// 2.x surface stays unchanged for clients that depend on it.
	ProfileContract Profile = ""
	// ProfileVMRun is vm_run alone: one-off commands, nothing persists.
	ProfileVMRun Profile = "vm-run"
	// ProfileWorkspaceCore is a workspace with files, exec, diff, reset,
	// export and delete, with narrow schemas: no secrets, network, shells,
	// services, snapshots or disk tools.
	ProfileWorkspaceCore Profile = "workspace-core"
	// ProfileWorkspaceFull is the contract's tools followed by every tool
	// added since (extensions).
	ProfileWorkspaceFull Profile = "workspace-full"
)

// Profiles are the named profiles, for flags, help and errors.
var Profiles = []Profile{ProfileVMRun, ProfileWorkspaceCore, ProfileWorkspaceFull}

// extensions are the tools beyond the contract, one list per feature, each
// declared in the feature's own file as `var xxxTools = []tool{...}`. A
// feature's tools join workspace-full by being listed here; they never
// join the default (contract) profile. Append; keep the order stable.
var extensions = [][]tool{
	namesTools,
	networkTools,
	filesTools,
	checkpointsTools,
	summaryTools,
	diskTools,
	jobsTools,
	forkTools,
}

// coreTools are the tools of workspace-core, in the order it lists them.
// A name whose tool is not registered (a feature not built yet) is left
// out; TestProfiles checks that the workspace basics are all there.
var coreTools = []string{
	"workspace_create", "workspace_list", "workspace_status", "workspace_exec",
	"workspace_file_list", "workspace_file_read", "workspace_file_write", "workspace_patch_apply",
	"workspace_diff", "workspace_summary", "workspace_reset", "workspace_export", "workspace_delete",
}

// narrowTools replace a full tool of the same name in workspace-core with
// a schema that lacks what the core profile leaves out (secrets, network,
// host compatibility, snapshots). They share the full tools' handlers.
var narrowTools = []tool{
	def(tool{name: "workspace_create", title: "Create a persistent workspace", defaults: coreCreateDefaults,
		description: "Create and boot a persistent workspace: a long-lived microVM whose /workspace directory survives across calls, without network. " +
			"Optionally seed /workspace from a host directory or archive (seed_path). The create-time content is the baseline (see workspace_diff, workspace_reset). " +
			"Always call workspace_delete when done."}, workspaceCreateCore),
	def(tool{name: "workspace_exec", title: "Run a command in a workspace", defaults: timeoutDefault,
		description: "Run one shell command in a workspace's /workspace and return exit_code, stdout and stderr; the workspace stays alive and files persist. " +
			"A command that exits non-zero is a normal result."}, workspaceExecCore),
	def(tool{name: "workspace_reset", title: "Reset a workspace", hints: destructive,
		description: "Recreate the whole workspace sandbox (fresh VM and root filesystem) with /workspace restored to its create-time baseline. " +
			"Command history is cleared. Use it to roll back after a failed attempt."}, workspaceResetCore),
}

// ParseProfile checks a --profile value; "" is the contract profile.
func ParseProfile(s string) (Profile, error) {
	p := Profile(s)
	if p == ProfileContract || slices.Contains(Profiles, p) {
		return p, nil
	}
	names := make([]string, len(Profiles))
	for i, q := range Profiles {
		names[i] = string(q)
	}
	return "", errdefs.New(errdefs.ErrInvalidArgument, "use one of "+strings.Join(names, ", ")+", or omit --profile for the contract's tools",
		"unknown MCP profile %q", s)
}

// allTools is the contract's table followed by every extension.
func allTools() []tool {
	all := slices.Clone(table)
	for _, ext := range extensions {
		all = append(all, ext...)
	}
	return all
}

// toolsFor composes the tool list of a profile.
func toolsFor(p Profile) ([]tool, error) {
	if _, err := ParseProfile(string(p)); err != nil {
		return nil, err
	}
	all := allTools()
	byName := map[string]tool{}
	for _, t := range all {
		if _, dup := byName[t.name]; dup {
			return nil, fmt.Errorf("mcp tool %q registered twice", t.name)
		}
		byName[t.name] = t
	}
	switch p {
	case ProfileVMRun:
		return []tool{byName["vm_run"]}, nil
	case ProfileWorkspaceCore:
		narrow := map[string]tool{}
		for _, t := range narrowTools {
			narrow[t.name] = t
		}
		var out []tool
		for _, n := range coreTools {
			if t, ok := narrow[n]; ok {
				out = append(out, t)
			} else if t, ok := byName[n]; ok {
				out = append(out, t)
			}
		}
		return out, nil
	case ProfileWorkspaceFull:
		return all, nil
	}
	return slices.Clone(table), nil
}

// ProfileToolNames lists the tools a server with profile p serves, in
// order.
func ProfileToolNames(p Profile) ([]string, error) {
	tools, err := toolsFor(p)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(tools))
	for i, t := range tools {
		names[i] = t.name
	}
	return names, nil
}

// instructionsFor is what the server tells a model, per profile: the
// contract's text names tools a narrow profile does not have.
func instructionsFor(p Profile) string {
	switch p {
	case ProfileVMRun:
		return vmRunInstructions
	case ProfileWorkspaceCore:
		return coreInstructions
	}
	return instructions
}

var vmRunInstructions = `pyro runs commands in disposable Linux microVMs (real VM isolation, no network).

Call vm_run for each command: it boots a fresh VM, runs the command with /bin/sh -c, returns exit_code/stdout/stderr and deletes the VM. Nothing persists between calls. A command that exits non-zero is a normal result: read exit_code and stderr. A tool error (isError) means the call itself could not be done; its text starts with the category and ends with a hint.`

var coreInstructions = `pyro runs commands in persistent Linux microVM workspaces (real VM isolation, no network).

Call workspace_create once (seed_path brings a host project in), then workspace_exec and the workspace_file_* / workspace_patch_apply tools as often as needed; /workspace persists across calls. workspace_diff shows what changed since creation, workspace_reset rolls back to it, workspace_export copies files out, workspace_list finds workspaces you created earlier (by name or label). Always call workspace_delete when you are done.
A command that exits non-zero is a normal result: read exit_code and stderr. A tool error (isError) means the call itself could not be done; its text starts with the category and ends with a hint.`

// coreCreateDefaults are workspace_create's defaults without network and
// host compatibility, which workspace-core does not offer.
var coreCreateDefaults = map[string]any{"environment": vmDefaults["environment"], "vcpu_count": vmDefaults["vcpu_count"], "mem_mib": vmDefaults["mem_mib"]}

type workspaceCreateCoreIn struct {
	Environment string `json:"environment,omitempty" jsonschema:"Environment to boot: debian:12, debian:12-base or debian:12-build; or an OCI image reference with a slash (docker.io/library/python:3.12-slim) that the host has pulled, or any image when the server runs with --allow-pull."`
	VCPUCount   int    `json:"vcpu_count,omitempty" jsonschema:"Number of virtual CPUs, 1 to 64."`
	MemMiB      int    `json:"mem_mib,omitempty" jsonschema:"Guest memory in MiB, 128 to 65536."`
	SeedPath    string `json:"seed_path,omitempty" jsonschema:"Optional host directory or local .tar/.tar.gz/.tgz (beneath an allowed root) whose content fills /workspace before the workspace is returned."`
	nameLabelsIn
}

func workspaceCreateCore(ctx context.Context, cl *call, in workspaceCreateCoreIn) (pyro.Workspace, string, error) {
	return workspaceCreate(ctx, cl, workspaceCreateIn{Environment: in.Environment, VCPUCount: in.VCPUCount, MemMiB: in.MemMiB, SeedPath: in.SeedPath,
		nameLabelsIn: in.nameLabelsIn})
}

type workspaceExecCoreIn struct {
	WorkspaceID    string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Command        string `json:"command" jsonschema:"Shell command, run by /bin/sh -c in /workspace. Required."`
	TimeoutSeconds int    `json:"timeout_seconds,omitempty" jsonschema:"Kill the command after this many seconds."`
}

func workspaceExecCore(ctx context.Context, cl *call, in workspaceExecCoreIn) (pyro.ExecResult, string, error) {
	return workspaceExec(ctx, cl, workspaceExecIn{WorkspaceID: in.WorkspaceID, Command: in.Command, TimeoutSeconds: in.TimeoutSeconds})
}

func workspaceResetCore(ctx context.Context, cl *call, in workspaceIDIn) (pyro.Workspace, string, error) {
	return workspaceReset(ctx, cl, workspaceResetIn{WorkspaceID: in.WorkspaceID})
}

// projectNote tells the model that its workspaces start from the project.
func projectNote(projectPath string) string {
	if projectPath == "" {
		return ""
	}
	return "\n\nProject: workspace_create without seed_path fills /workspace with the git-tracked files of " + projectPath +
		" (workspace_seed.origin_kind project_path); pass seed_path to start from something else."
}
