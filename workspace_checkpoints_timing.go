package pyro

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// phases times the steps of one checkpointed exec for PYRO_LOG=debug: one
// record with each step's time, so that where a checkpoint's milliseconds
// go can be read off any run (scripts/bench-checkpoint.sh's rows are the
// sum). A nil logger times nothing.
type phases struct {
	log   *slog.Logger
	what  string
	start time.Time
	last  time.Time
	steps []string
	// guestSteps are the agent's own steps of the call that ran the
	// command, on the guest's clock (agentapi.ExecResult.Timings).
	guestSteps string
}

func newPhases(log *slog.Logger, what string) *phases {
	if log == nil || !log.Enabled(context.Background(), slog.LevelDebug) {
		return nil
	}
	now := time.Now()
	return &phases{log: log, what: what, start: now, last: now}
}

// mark ends the step named step.
func (p *phases) mark(step string) {
	if p == nil {
		return
	}
	now := time.Now()
	p.steps = append(p.steps, step+"="+ms(now.Sub(p.last)))
	p.last = now
}

// guest keeps the guest's steps of the exec call (microseconds each).
func (p *phases) guest(steps string) {
	if p != nil {
		p.guestSteps = steps
	}
}

// done logs the steps and the total.
func (p *phases) done(attrs ...any) {
	if p == nil {
		return
	}
	attrs = append([]any{"total_ms", ms(time.Since(p.start)), "steps", strings.Join(p.steps, " ")}, attrs...)
	if p.guestSteps != "" {
		attrs = append(attrs, "guest_us", p.guestSteps)
	}
	p.log.Debug(p.what, attrs...)
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64)
}
