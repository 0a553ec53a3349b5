package pyro

import (
	"context"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// serviceCounts returns how many services a running workspace has and how
// many of them are alive (starting, running or ready). Errors count as none:
// status must not fail because the guest is busy.
func serviceCounts(ctx context.Context, agent *agentapi.Client) (total, running int) {
	list, err := agent.ListServices(ctx)
	if err != nil {
		return 0, 0
	}
	for _, s := range list {
		switch s.State {
		case "starting", "running", "ready":
			running++
		}
	}
	return len(list), running
}
