package vmm

import (
	"context"
	"os"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Live fork (issue #14): a running guest is saved whole, RAM and devices,
// while it keeps running; it is paused only for the last dirty pages and
// for whatever the caller must copy at that instant (its disks). Each fork
// is then a new machine restored from that state (Spec.RestoreLive).

// LiveSaver is a Backend that can save a running machine and resume it.
type LiveSaver interface {
	// SaveLive writes the machine in dir (RAM and device state) to state.
	// At the end the machine is paused: whilePaused runs then (disk
	// copies that must match the saved RAM), and the machine is resumed
	// whatever happened. An error leaves state incomplete: the caller
	// removes it.
	SaveLive(ctx context.Context, dir vmdir.Dir, state *os.File, whilePaused func(context.Context) error) (LiveSave, error)
}

// LiveSave says what a live save did.
type LiveSave struct {
	// PausedMS is how long the guest was paused (the migration's final
	// stage, whilePaused and the resume); TotalMS the whole save.
	PausedMS int64
	TotalMS  int64
	// StateBytes is the size of the saved state.
	StateBytes int64
}
