package doctor

import (
	"fmt"
	"strings"
)

// Leftovers is the report line for what the state directory's reconcile
// removed: what interrupted work (a `kill -9` of pyro, a crash, a power
// cut) left behind, such as a one-shot VM's directory or a half-deleted
// one. Removed leftovers are reported, not failed: they are gone; only
// removals that failed are a warning.
func Leftovers(removed int, failed []string, incomplete bool) Check {
	c := Check{Name: "leftovers", Status: OK}
	switch removed {
	case 0:
		c.Detail = "none from interrupted runs"
	case 1:
		c.Detail = "1 leftover from an interrupted run, removed"
	default:
		c.Detail = fmt.Sprintf("%d leftovers from interrupted runs, removed", removed)
	}
	if len(failed) > 0 {
		c.Status = Warn
		c.Detail += fmt.Sprintf("; %d could not be removed: %s", len(failed), strings.Join(failed, "; "))
		c.Hint = "check the state directory's ownership and permissions, then run `pyro doctor` again"
	}
	if incomplete {
		c.Status = Warn
		c.Detail += " (stopped at its time budget: more may remain)"
		c.Hint = "run `pyro doctor` again"
	}
	return c
}
