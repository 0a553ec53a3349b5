package fakevmm_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

func TestFakeServesTheAgent(t *testing.T) {
	root := t.TempDir()
	v, err := vm.BootWith(context.Background(), fakevmm.Steps(fakevmm.New(vmm.Features{})), vm.Deps{Dirs: statedir.Dirs{Root: root}},
		vm.Config{Environment: "debian:12", VCPUs: 1, MemMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(context.Background())
	if _, err := v.Agent.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	res, err := v.Agent.Exec(context.Background(), agentapi.ExecRequest{Shell: "echo hi", TimeoutMS: 5000}, nil)
	if err != nil || res.Stdout != "hi\n" {
		t.Fatalf("%+v %v", res, err)
	}
	if boots, _ := fakevmm.Boots(v.Dir); len(boots) != 1 {
		t.Fatalf("boots %v", boots)
	}
	_ = filepath.Join
}
