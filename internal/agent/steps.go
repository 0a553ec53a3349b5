package agent

import (
	"strconv"
	"strings"
	"time"
)

// steps times the phases of one identity or exec call on the guest's
// clock, when the host asks (agentapi.IdentityRequest.Timings,
// ExecRequest.Timings; the host asks when it logs at debug level). A nil
// *steps does nothing, so the calls that did not ask run no more code:
// under TCG every instruction a restored guest runs is translated afresh,
// and these phases are what a warm start waits for.
type steps struct {
	last time.Time
	b    strings.Builder
}

func newSteps(on bool) *steps {
	if !on {
		return nil
	}
	return &steps{last: time.Now()}
}

// mark ends the phase named name: "name=µs " since the previous mark.
func (s *steps) mark(name string) {
	if s == nil {
		return
	}
	now := time.Now()
	s.b.WriteString(name)
	s.b.WriteByte('=')
	s.b.WriteString(strconv.FormatInt(now.Sub(s.last).Microseconds(), 10))
	s.b.WriteByte(' ')
	s.last = now
}

// String is the phases marked so far ("" for nil).
func (s *steps) String() string {
	if s == nil {
		return ""
	}
	return strings.TrimSuffix(s.b.String(), " ")
}
