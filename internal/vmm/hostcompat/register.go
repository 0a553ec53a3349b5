package hostcompat

import (
	"context"

	"github.com/pyro-mcp/pyro/internal/vmm"
)

func init() {
	vmm.Register(vmm.Registration{Name: "host", Priority: 100, WeakerIsolation: true, Probe: probe})
}

func probe(_ context.Context, in vmm.ProbeInput) (vmm.Probed, error) {
	return vmm.Probed{Backend: New(), Note: "running on the host in Linux namespaces (" + Note(in.Spec) + ")"}, nil
}
