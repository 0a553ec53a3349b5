// Command pyro is the CLI, the MCP server and, inside a guest, the agent.
package main

import (
	"os"

	"github.com/pyro-mcp/pyro/internal/agent"
	"github.com/pyro-mcp/pyro/internal/cli"
)

func main() {
	// The same static binary is the guest's /init and its agent process.
	if os.Getpid() == 1 {
		agent.Init()
	}
	if len(os.Args) > 1 && os.Args[1] == agent.ChildArg {
		agent.RunChild()
	}
	os.Exit(cli.Main(os.Args[1:]))
}
