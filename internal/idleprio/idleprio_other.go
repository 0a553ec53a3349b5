//go:build !linux

package idleprio

import "errors"

type schedAttr struct{}

// Lower is Linux only (SCHED_IDLE).
func Lower(pid int) (*Lowered, error) {
	return nil, errors.New("idle priority is Linux only")
}

// Restore has nothing to put back off Linux.
func (l *Lowered) Restore() error { return nil }
