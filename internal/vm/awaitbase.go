package vm

import (
	"context"
	"fmt"
	"time"
)

// A seeded workspace's baseline image is built on the host while its guest
// starts (see the root package's workspace create): QEMU opens the image
// at once, since the guest reads nothing of that disk until it mounts it,
// and the mount waits for Config.AwaitBase. A cold guest mounts its disks
// as it boots, so it waits before its VMM starts; a restored guest mounts
// them in the identity call, so it waits after the restore, which then
// overlaps the build.

// Step names of the wait.
const (
	StepAwaitBase     = "await workspace base"
	StepAwaitBaseCold = "await workspace base (cold)"
)

// awaitBaseCold waits for the baseline before a cold guest starts (a
// restore waits later, in awaitBase).
func awaitBaseCold(ctx context.Context, d Deps, c Config, v *VM) error {
	if v.warm.snapshot != nil {
		return nil
	}
	return awaitBase(ctx, d, c, v)
}

// awaitBase waits until the baseline is whole and durable (Config.AwaitBase
// returned nil). Its error ends the boot: a guest never mounts a baseline
// whose build failed.
func awaitBase(ctx context.Context, d Deps, c Config, v *VM) error {
	if c.AwaitBase == nil || v.baseReady {
		return nil
	}
	t := time.Now()
	if err := c.AwaitBase(ctx); err != nil {
		return fmt.Errorf("workspace baseline: %w", err)
	}
	v.baseReady = true
	if d.Logger != nil {
		d.Logger.Debug("workspace baseline ready", "vm_id", v.ID, "waited_ms", time.Since(t).Milliseconds())
	}
	return nil
}
