// Command pyro is the CLI, the MCP server and, inside a guest, the agent.
package main

import (
	"os"

	"github.com/pyro-mcp/pyro/internal/agent"
	"github.com/pyro-mcp/pyro/internal/cli"
	"github.com/pyro-mcp/pyro/internal/hostwrite"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmm/hostcompat"
)

func main() {
	// First: the host-compat sandbox's init is PID 1 of its PID namespace
	// and must not be taken for the guest's /init.
	if len(os.Args) > 1 && os.Args[1] == hostcompat.HiddenArg {
		hostcompat.Main(os.Args[2:])
	}
	// The confined debugfs of a host-side push (internal/hostwrite).
	if len(os.Args) > 1 && os.Args[1] == hostwrite.HiddenArg {
		hostwrite.Main(os.Args[2:])
	}
	if self, err := os.Executable(); err == nil {
		hostwrite.UseTool(self)
	}
	// The same static binary is the guest's /init and its agent process.
	if os.Getpid() == 1 {
		agent.Init()
	}
	if len(os.Args) > 1 && os.Args[1] == agent.ChildArg {
		agent.RunChild()
	}
	if len(os.Args) > 2 && os.Args[1] == supervisor.Arg {
		os.Exit(supervisor.Main(os.Args[2]))
	}
	os.Exit(cli.Main(os.Args[1:]))
}
