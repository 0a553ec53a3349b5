package agent

import "github.com/pyro-mcp/pyro/internal/agentapi"

// inherited is what this agent runs (agentapi.Inherited): after a fork's
// restore, what the guest it was saved from ran.
func (s *Agent) inherited() *agentapi.Inherited {
	return &agentapi.Inherited{Services: s.services.list(), Shells: s.shells.list(), Jobs: s.jobs.list()}
}
