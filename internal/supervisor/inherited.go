package supervisor

import (
	"encoding/json"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// maxKeptInherited bounds what a fork's status keeps of its guest's
// identity answer (services, shells and jobs it inherited). The guest
// chooses it (up to an agent reply's bound) and every status call for
// the fork's whole life would carry it; past this the fork's result asks
// the agent instead, as for a source from an older pyro.
const maxKeptInherited = 64 << 10

// keptInherited is in when its encoding fits maxKeptInherited, else nil.
func keptInherited(in *agentapi.Inherited) *agentapi.Inherited {
	if in == nil {
		return nil
	}
	b, err := json.Marshal(in)
	if err != nil || len(b) > maxKeptInherited {
		return nil
	}
	return in
}
