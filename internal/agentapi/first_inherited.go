package agentapi

import (
	"errors"
	"time"
)

// A fork's first call (issue #14). A fork's host asks what the guest
// still runs (IdentityRequest.Inherited) with its identity; the first-call
// frame carries that question (flag firstInherited) and its answer, so a
// fork's guest, like a warm one, runs no yamux, net/http or encoding/json
// code before its identity is applied and answered. The answer's reply
// flags say two things:
//
//	firstKnowsInherited  the agent reads the question (Health.FirstInherited:
//	                     a host forking this guest may send it in the frame)
//	firstHasInherited    the Inherited follows the health fields
//
// An agent that knows the frame but not the question (0a1df22) ignores the
// flag and sets neither bit: the host then has no Inherited (nil) and asks
// for the lists, as it does of a source started by an older pyro. An
// answer that would not fit MaxFirstBytes is left out the same way.
//
// Encoding, after the health fields: three counted lists (services,
// shells, jobs), every field in the order of its struct, an optional
// value (*int, *time.Time, *ServiceReadiness) as a presence byte and the
// value, a time as its Unix nanoseconds (i64) and its zone's offset in
// seconds (i64), the zero time as a presence byte of 0.

const (
	firstInherited = firstHasExec << 1 // request: Inherited asked

	firstKnowsInherited = firstMounted << 1 // reply: the agent reads firstInherited
	firstHasInherited   = firstMounted << 2 // reply: an Inherited follows
)

func (e *frameEncoder) optInt(p *int) {
	e.bool(p != nil)
	if p != nil {
		e.i64(int64(*p))
	}
}

func (e *frameEncoder) time(t time.Time) {
	e.bool(!t.IsZero())
	if !t.IsZero() {
		_, off := t.Zone()
		e.i64(t.UnixNano())
		e.i64(int64(off))
	}
}

func (e *frameEncoder) optTime(p *time.Time) {
	e.bool(p != nil)
	if p != nil {
		e.time(*p)
	}
}

func (e *frameEncoder) strs(s []string) {
	e.bool(s != nil)
	e.u32(uint32(len(s)))
	for _, v := range s {
		e.str(v)
	}
}

func (e *frameEncoder) inherited(in *Inherited) {
	e.u32(uint32(len(in.Services)))
	for _, s := range in.Services {
		e.str(s.Name)
		e.str(s.State)
		e.strs(s.Argv)
		e.str(s.Cwd)
		e.bool(s.Readiness != nil)
		if r := s.Readiness; r != nil {
			e.str(r.Type)
			e.str(r.Path)
			e.str(r.Address)
			e.str(r.URL)
			e.i64(int64(r.ExpectStatus))
			e.str(r.Command)
		}
		e.i64(int64(s.PID))
		e.optInt(s.ExitCode)
		e.str(s.Signal)
		e.time(s.StartedAt)
		e.optTime(s.ReadyAt)
		e.optTime(s.StoppedAt)
		e.i64(int64(s.RestartCount))
		e.str(s.LastProbeError)
		e.str(s.Error)
	}
	e.u32(uint32(len(in.Shells)))
	for _, s := range in.Shells {
		e.str(s.ShellID)
		e.i64(int64(s.PID))
		e.str(s.Cwd)
		e.i64(int64(s.Cols))
		e.i64(int64(s.Rows))
		e.str(s.State)
		e.optInt(s.ExitCode)
		e.strs(s.Argv)
		e.time(s.StartedAt)
		e.i64(s.EndCursor)
	}
	e.u32(uint32(len(in.Jobs)))
	for _, j := range in.Jobs {
		e.str(j.JobID)
		e.str(j.Command)
		e.str(j.State)
		e.optInt(j.ExitCode)
		e.bool(j.TimedOut)
		e.time(j.StartedAt)
		e.i64(j.EndCursor)
	}
}

// The least bytes an item's encoding takes (empty strings, absent
// options): an inherited count is checked against them, so what is
// allocated stays within a few times the frame.
const minService, minShell, minJob = 50, 51, 23

func (d *frameDecoder) optInt() *int {
	if !d.bool() {
		return nil
	}
	v := int(d.i64())
	return &v
}

func (d *frameDecoder) time() time.Time {
	if !d.bool() {
		return time.Time{}
	}
	ns, off := d.i64(), d.i64()
	if d.err != nil {
		return time.Time{}
	}
	if off < -24*3600 || off > 24*3600 {
		d.err = errors.New("a time zone offset beyond a day")
		return time.Time{}
	}
	t := time.Unix(0, ns)
	if off == 0 {
		return t.UTC()
	}
	return t.In(time.FixedZone("", int(off)))
}

func (d *frameDecoder) optTime() *time.Time {
	if !d.bool() {
		return nil
	}
	t := d.time()
	return &t
}

func (d *frameDecoder) strs() []string {
	present := d.bool()
	n := d.count()
	if !present || d.err != nil {
		return nil
	}
	out := make([]string, 0, n)
	for range n {
		out = append(out, d.str())
	}
	return out
}

// inherited reads what frameEncoder.inherited wrote. Every count is
// checked against the bytes left before anything is allocated (count),
// and the lists are never nil, as the agent's JSON answer's are not.
func (d *frameDecoder) inherited() *Inherited {
	in := &Inherited{}
	n := d.countOf(minService)
	in.Services = make([]ServiceStatus, 0, n)
	for range n {
		var s ServiceStatus
		s.Name = d.str()
		s.State = d.str()
		s.Argv = d.strs()
		s.Cwd = d.str()
		if d.bool() {
			r := &ServiceReadiness{}
			r.Type = d.str()
			r.Path = d.str()
			r.Address = d.str()
			r.URL = d.str()
			r.ExpectStatus = int(d.i64())
			r.Command = d.str()
			s.Readiness = r
		}
		s.PID = int(d.i64())
		s.ExitCode = d.optInt()
		s.Signal = d.str()
		s.StartedAt = d.time()
		s.ReadyAt = d.optTime()
		s.StoppedAt = d.optTime()
		s.RestartCount = int(d.i64())
		s.LastProbeError = d.str()
		s.Error = d.str()
		in.Services = append(in.Services, s)
	}
	n = d.countOf(minShell)
	in.Shells = make([]ShellInfo, 0, n)
	for range n {
		var s ShellInfo
		s.ShellID = d.str()
		s.PID = int(d.i64())
		s.Cwd = d.str()
		s.Cols = int(d.i64())
		s.Rows = int(d.i64())
		s.State = d.str()
		s.ExitCode = d.optInt()
		s.Argv = d.strs()
		s.StartedAt = d.time()
		s.EndCursor = d.i64()
		in.Shells = append(in.Shells, s)
	}
	n = d.countOf(minJob)
	in.Jobs = make([]JobInfo, 0, n)
	for range n {
		var j JobInfo
		j.JobID = d.str()
		j.Command = d.str()
		j.State = d.str()
		j.ExitCode = d.optInt()
		j.TimedOut = d.bool()
		j.StartedAt = d.time()
		j.EndCursor = d.i64()
		in.Jobs = append(in.Jobs, j)
	}
	if len(in.Jobs) > MaxJobs {
		in.Jobs = in.Jobs[:MaxJobs] // as ListJobs and SetIdentityWithin
	}
	return in
}
