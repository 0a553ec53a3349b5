// Package idleprio runs a process at idle CPU priority for a while and
// puts it back as it was: its threads under SCHED_IDLE, and its session's
// autogroup (which it shares with the rest of its session) at nice 19.
//
// Why (issue #14): a fork of a workspace restores ten guests on two cores
// under TCG, and a fork that already runs its identity idles beside the
// others, yet an idle TCG guest still burns ~80-100 ms of host CPU a
// second (its kernel's 250 Hz tick). Under SCHED_IDLE such a guest only
// runs on a core nobody else wants: the restores still under way get the
// cores, and the idle guest's timers merely fire late (its clock follows
// the host's, so nothing jumps, unlike pausing it).
//
// A lowered process must never stay lowered: Lower refuses unless this
// process may put it back (CAP_SYS_NICE, or an RLIMIT_NICE that allows
// its old nice value: an unprivileged thread may enter SCHED_IDLE but not
// leave it), and Restore puts every thread back, also threads started
// meanwhile.
package idleprio

import "errors"

// ErrCannotRestore is Lower's refusal when this process could not put
// the process back (see the package comment).
var ErrCannotRestore = errors.New("could not raise its priority again")

// Lowered is a process put at idle priority by Lower.
type Lowered struct {
	pid   int
	pidfd int               // holds the process: its pid may be reused once it exits
	old   map[int]schedAttr // each lowered thread's attributes before
	main  schedAttr         // the main thread's: for threads started since
	// group: its session's autogroup (groupID) was lowered from nice
	// groupOld and is not yet put back.
	group    bool
	groupID  string
	groupOld int
	done     bool
}

// Pid is the lowered process.
func (l *Lowered) Pid() int { return l.pid }
