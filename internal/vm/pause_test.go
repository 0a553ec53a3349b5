package vm_test

import (
	"context"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/vm"
)

// A hand-out's identity call to a stuck guest (its agent reads and never
// answers) fails within HandoutIdentityTimeout, not agentapi's 15 s call
// timeout: the claimer then starts a guest of its own.
func TestHandoutIdentityFailsFast(t *testing.T) {
	v := &vm.VM{ID: "pooled1", Agent: agentapi.NewPausableClient(vm.SilentGuest)}
	defer v.Agent.Close()
	start := time.Now()
	err := v.SetIdentity(context.Background(), "claimer1", false)
	took := time.Since(start)
	if err == nil {
		t.Fatal("a stuck guest took its identity")
	}
	if took < vm.HandoutIdentityTimeout/2 || took > vm.HandoutIdentityTimeout+2*time.Second {
		t.Fatalf("identity call gave up after %s (bound %s): %v", took, vm.HandoutIdentityTimeout, err)
	}
}
