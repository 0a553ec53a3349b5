package vm_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// Every cold-booted guest is told a hostname of its own, the one a
// restored guest of its id gets with its identity (not the image's
// "pyro" for all).
func TestColdBootHostname(t *testing.T) {
	d := deps(t)
	var names []string
	for range 2 {
		v, err := vm.BootWith(context.Background(), fakeSteps(), d, cfg)
		if err != nil {
			t.Fatal(err)
		}
		boots, _ := fakevmm.Boots(v.Dir)
		i := slices.IndexFunc(boots[0].Cmdline, func(w string) bool { return strings.HasPrefix(w, "pyro.hostname=") })
		if i < 0 || boots[0].Cmdline[i] != "pyro.hostname="+vm.Hostname(v.ID) {
			t.Fatalf("cmdline %q, want the hostname of %s", boots[0].Cmdline, v.ID)
		}
		names = append(names, boots[0].Cmdline[i])
		v.Close(context.Background())
	}
	if names[0] == names[1] {
		t.Fatalf("two guests named %s", names[0])
	}
}
