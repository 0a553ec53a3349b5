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
	// First, when hooks.Release lets go of the caller's agent session,
	// it waits until the guest agent closed its channel (so the state
	// holds an agent waiting for a new host). At the end the machine is
	// paused: hooks.WhilePaused runs then (disk copies that must match
	// the saved RAM), and the machine is resumed whatever happened. An
	// error leaves state incomplete: the caller removes it.
	SaveLive(ctx context.Context, dir vmdir.Dir, state *os.File, hooks LiveSaveHooks) (LiveSave, error)
}

// LiveSaveHooks are the caller's parts of a live save; each may be nil.
type LiveSaveHooks struct {
	// Release ends the caller's agent session (and keeps it from dialling
	// again until the save returned), reporting whether it did: a caller
	// with calls in flight keeps its session, and the save goes on with
	// it (LiveSave.Released false).
	Release func() bool
	// WhilePaused runs while the saved machine is paused at the instant
	// the state describes.
	WhilePaused func(context.Context) error
}

// LiveSave says what a live save did.
type LiveSave struct {
	// PausedMS is how long the guest was paused (the migration's final
	// stage, whilePaused and the resume); TotalMS the whole save.
	PausedMS int64
	TotalMS  int64
	// StateBytes is the size of the saved state.
	StateBytes int64
	// Released: the saved guest had no agent session (Release let go of
	// it and the guest closed its channel before the save), so a machine
	// restored from it answers its new host at once, like a warm start;
	// otherwise a restore must wait until the guest dropped the saved
	// session (Spec.RestoreLive).
	Released bool
	// ReleaseMS is how long the guest took to close its channel.
	ReleaseMS int64
}
