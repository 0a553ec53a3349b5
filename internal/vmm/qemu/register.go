package qemu

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmm"
)

func init() {
	vmm.Register(vmm.Registration{Name: "qemu", Priority: 10, Probe: probe})
}

// probe finds the QEMU binary and decides between KVM and TCG (a cached
// probe boot). When a fallback exists it also checks that the binary runs
// at all: one that cannot (missing libraries, wrong architecture) is as
// good as none.
func probe(ctx context.Context, in vmm.ProbeInput) (vmm.Probed, error) {
	bin, err := Binary()
	if err != nil {
		cause := errors.Unwrap(err)
		if cause == nil {
			cause = err
		}
		return vmm.Probed{}, &vmm.Unusable{Reason: fmt.Sprintf("qemu not found: %v", cause), Hint: "install it with `apt-get install qemu-system-x86`"}
	}
	if in.FallbackAllowed {
		vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, verr := Version(vctx, bin)
		cancel()
		if verr != nil && ctx.Err() == nil {
			return vmm.Probed{}, &vmm.Unusable{Reason: "qemu cannot run: " + verr.Error(), Hint: "reinstall qemu-system-x86"}
		}
	}
	verdict := ProbeKVM(ctx, in.CacheDir, bin, in.Spec)
	accel := "tcg"
	if verdict.Usable {
		accel = "kvm"
	}
	return vmm.Probed{Backend: New(bin, accel), Note: verdict.Reason}, nil
}
