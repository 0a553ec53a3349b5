package fakevmm

import (
	"context"
	"os"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// LiveSaver is the fake backend with a live save that saves nothing and
// only runs the caller's hooks, in the order QEMU's runs them around its
// migration: the release, then what runs while the guest is paused.
type LiveSaver struct{ *Backend }

var _ vmm.LiveSaver = LiveSaver{}

// SaveLive implements vmm.LiveSaver.
func (LiveSaver) SaveLive(ctx context.Context, _ vmdir.Dir, _ *os.File, hooks vmm.LiveSaveHooks) (vmm.LiveSave, error) {
	out := vmm.LiveSave{Released: hooks.Release != nil && hooks.Release()}
	if hooks.WhilePaused != nil {
		return out, hooks.WhilePaused(ctx)
	}
	return out, nil
}
