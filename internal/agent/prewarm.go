package agent

import (
	"encoding/json"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// prewarm runs, in a guest that may be saved as a memory snapshot, the
// one-time work that the first calls after a restore would otherwise do
// in every restored guest: encoding/json's per-type reflection (cached
// for the process, so saved with it) for the types of the identity call,
// of an exec and of the status calls that follow a start, and the load of the local time zone (the first time
// formatted with it reads and parses /etc/localtime). Under TCG each
// restored QEMU translates every guest instruction it runs afresh, so
// code that runs once before the save instead of once per restore is
// code no restore translates.
func prewarm() {
	for _, v := range []any{
		&agentapi.IdentityRequest{}, &agentapi.IdentityResponse{}, &agentapi.Health{},
		&agentapi.ExecRequest{}, &agentapi.ErrorResponse{},
		&agentapi.Event{Result: &agentapi.ExecResult{}, Error: &agentapi.ErrorResponse{}}, &agentapi.QuietReport{},
		// What a workspace's host asks right after a start or a fork.
		&agentapi.ServiceList{}, &agentapi.JobList{}, &agentapi.ShellList{},
		&agentapi.SecretsRequest{}, &agentapi.SecretsResponse{},
	} {
		if b, err := json.Marshal(v); err == nil {
			_ = json.Unmarshal(b, v)
		}
	}
	_, _ = time.Now().Zone()
}
