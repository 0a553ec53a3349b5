package pyro

import (
	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// The contract's defaults, in one place. The SDK applies them to zero
// option fields, the CLI uses them as flag defaults, the MCP server
// (package mcpserver) publishes them as JSON-schema defaults, and the
// Python package reads them from python/pyro_mcp/_defaults.py, which is
// generated from this file (go generate; a unit test fails when it is
// stale). Where the guest agent applies the same default, the constant is
// the agent's, so the two cannot drift.
//
//go:generate go run ./tools/pydefaults
const (
	// DefaultEnvironment is the environment booted when none is named.
	DefaultEnvironment = "debian:12"
	// DefaultVCPUCount and DefaultMemMiB size a VM or workspace.
	DefaultVCPUCount = 1
	DefaultMemMiB    = 1024
	// DefaultTimeoutSeconds bounds one command (run, vm exec, workspace exec).
	DefaultTimeoutSeconds = 30
	// DefaultNetwork: guests have no network device unless asked.
	DefaultNetwork = false
	// DefaultAllowHostCompat: never fall back to the weaker host sandbox
	// unless asked.
	DefaultAllowHostCompat = false

	// WorkspaceDir is the guest directory that persists in a workspace;
	// it is also the default cwd of services and shells and the default
	// destination of sync push.
	WorkspaceDir = workspace.Root
	// BaselineSnapshot is the implicit create-time snapshot, the default
	// target of reset.
	BaselineSnapshot = workspace.Baseline

	// DefaultReadyTimeoutSeconds and DefaultReadyIntervalMS time a
	// service's readiness probe.
	DefaultReadyTimeoutSeconds = agentapi.DefaultServiceReadyTimeoutMS / 1000
	DefaultReadyIntervalMS     = agentapi.DefaultServiceReadyIntervalMS
	// DefaultLogTailLines is how many service log lines are returned.
	DefaultLogTailLines = agentapi.DefaultServiceLogTailLines

	// DefaultShellCols and DefaultShellRows size a shell's terminal.
	DefaultShellCols = agentapi.DefaultShellCols
	DefaultShellRows = agentapi.DefaultShellRows
	// DefaultShellCursor and DefaultShellMaxChars select what a shell read
	// returns: from the start, at most this many characters.
	DefaultShellCursor   = 0
	DefaultShellMaxChars = agentapi.DefaultShellMaxChars
	// DefaultShellSignal is sent by a shell signal without a name (Ctrl-C).
	DefaultShellSignal = "INT"
	// DefaultAppendNewline: shell writes press Enter after the input.
	DefaultAppendNewline = true

	// DefaultReadMaxBytes bounds what a workspace file read returns.
	DefaultReadMaxBytes = 65536
)
