package supervisor

import (
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// A hostile fork's guest answers its identity call with the largest
// inherited lists an agent reply may hold: its status does not carry them.
func TestKeptInheritedBounded(t *testing.T) {
	small := &agentapi.Inherited{Services: []agentapi.ServiceStatus{{Name: "web"}}}
	if keptInherited(small) != small {
		t.Fatal("a small answer is not kept")
	}
	big := &agentapi.Inherited{}
	for i := 0; i < 2000; i++ {
		big.Jobs = append(big.Jobs, agentapi.JobInfo{JobID: strings.Repeat("j", 64)})
	}
	if keptInherited(big) != nil {
		t.Fatal("an answer over the bound is kept in the status")
	}
	if keptInherited(nil) != nil {
		t.Fatal("nil")
	}
}
