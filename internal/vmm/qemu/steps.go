package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// stepClock times the host's steps of one QEMU start for the debug log
// (vmm.Spec.Logger at debug level): which of launching the process,
// the QMP handshake, loading the state and resuming the guest a start's
// milliseconds go to. A nil clock (no debug log) records nothing.
type stepClock struct {
	start, last time.Time
	parts       []string
}

// newStepClock returns a clock when log would print debug lines, else nil.
func newStepClock(ctx context.Context, log *slog.Logger) *stepClock {
	if log == nil || !log.Enabled(ctx, slog.LevelDebug) {
		return nil
	}
	now := time.Now()
	return &stepClock{start: now, last: now}
}

// mark ends the step called name (it began at the previous mark).
func (c *stepClock) mark(name string) {
	if c == nil {
		return
	}
	now := time.Now()
	c.parts = append(c.parts, fmt.Sprintf("%s=%.1f", name, float64(now.Sub(c.last).Microseconds())/1000))
	c.last = now
}

// String lists the steps in milliseconds, and their total.
func (c *stepClock) String() string {
	if c == nil {
		return ""
	}
	return fmt.Sprintf("%s total=%.1f", strings.Join(c.parts, " "), float64(time.Since(c.start).Microseconds())/1000)
}
