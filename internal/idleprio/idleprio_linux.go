package idleprio

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// schedAttr is a thread's scheduling attributes (sched_getattr).
type schedAttr = unix.SchedAttr

// restorePasses bounds Restore's passes over the threads: each pass also
// catches threads a lowered thread started during the previous one.
const restorePasses = 4

// Lower puts every thread of process pid under SCHED_IDLE and returns
// what puts them back. It refuses (ErrCannotRestore, nothing changed)
// when this process could not put them back, and leaves a thread that is
// not under the normal policy (real-time, already idle) as it is.
func Lower(pid int) (*Lowered, error) {
	// The process is held by a pidfd: Restore may run after it exited and
	// was reaped, when its pid may be another process's.
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("hold process %d: %w", pid, err)
	}
	l, err := lower(pid, pidfd)
	if err != nil {
		unix.Close(pidfd)
	}
	return l, err
}

func lower(pid, pidfd int) (*Lowered, error) {
	main, err := unix.SchedGetAttr(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("read the scheduling of process %d: %w", pid, err)
	}
	if main.Policy != unix.SCHED_NORMAL && main.Policy != unix.SCHED_BATCH {
		return nil, fmt.Errorf("process %d runs under scheduling policy %d, left as it is", pid, main.Policy)
	}
	if !mayRaise(pid, int(main.Nice)) {
		return nil, fmt.Errorf("lower process %d: %w", pid, ErrCannotRestore)
	}
	l := &Lowered{pid: pid, pidfd: pidfd, old: map[int]schedAttr{}, main: *main}
	tids, err := threads(pid)
	if err != nil {
		return nil, err
	}
	for _, tid := range tids {
		a, err := unix.SchedGetAttr(tid, 0)
		if err != nil || (a.Policy != unix.SCHED_NORMAL && a.Policy != unix.SCHED_BATCH) {
			continue // exited, or not ours to change
		}
		idle := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE, Nice: a.Nice}
		if err := unix.SchedSetAttr(tid, &idle, 0); err != nil {
			if errors.Is(err, unix.ESRCH) {
				continue
			}
			rerr := l.restore()
			return nil, errors.Join(fmt.Errorf("lower thread %d of process %d: %w", tid, pid, err), rerr)
		}
		l.old[tid] = *a
	}
	l.groupID, l.groupOld, l.group = lowerGroup(pid)
	return l, nil
}

// The CPU is shared between autogroups (one per session, when the kernel
// groups tasks so and the process sits in the root cpu cgroup) before it
// is shared between their threads: a fork's QEMU is alone in its
// supervisor's session, so SCHED_IDLE alone left its group a full share
// beside every other session (measured: the forks' idle CPU while their
// siblings restored did not drop). Its session's group goes to nice 19 as
// well; a group at nice 0 or above may be put back by its owner.

// groupNice is the nice value of the autogroup of process pid, from
// /proc/PID/autogroup ("/autogroup-N nice V").
func groupNice(pid int) (int, bool) {
	_, n, ok := group(pid)
	return n, ok
}

// group is the autogroup of process pid: its name and nice value.
func group(pid int) (string, int, bool) {
	b, err := os.ReadFile(autogroupPath(pid))
	if err != nil {
		return "", 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 3 || f[1] != "nice" {
		return "", 0, false
	}
	n, err := strconv.Atoi(f[2])
	return f[0], n, err == nil
}

// groupMember finds a process in the autogroup called id.
func groupMember(id string) (int, bool) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, _, ok := group(pid); ok && g == id {
			return pid, true
		}
	}
	return 0, false
}

func autogroupPath(pid int) string { return "/proc/" + strconv.Itoa(pid) + "/autogroup" }

// lowerGroup puts the autogroup of process pid at nice 19 and reports
// whether it did, the group's name and its nice value before. A group below nice 0 is left
// as it is (only a privileged process may put it back).
func lowerGroup(pid int) (id string, old int, ok bool) {
	id, old, ok = group(pid)
	if !ok || old < 0 || old >= groupIdleNice {
		return "", 0, false
	}
	if setGroupNice(pid, groupIdleNice) != nil {
		return "", 0, false
	}
	return id, old, true
}

// groupIdleNice is the nice value of a lowered autogroup.
const groupIdleNice = 19

// groupRetry bounds setGroupNice's retries: the kernel lets an
// unprivileged process change an autogroup's nice once per 100 ms
// (EAGAIN otherwise), for all groups at once.
const groupRetry = 3 * time.Second

// setGroupNice sets the autogroup nice value of process pid.
func setGroupNice(pid, nice int) error {
	deadline := time.Now().Add(groupRetry)
	for {
		err := os.WriteFile(autogroupPath(pid), []byte(strconv.Itoa(nice)), 0)
		if !errors.Is(err, unix.EAGAIN) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restore puts every thread of the process back under the attributes it
// had (a thread started since Lower gets the main thread's). It is safe
// to call more than once; a process that exited meanwhile is no error.
func (l *Lowered) Restore() error {
	if l.done {
		return nil
	}
	err := l.restore()
	if l.done {
		unix.Close(l.pidfd)
	}
	return err
}

// alive says whether the lowered process still runs: then its pid is
// still its own.
func (l *Lowered) alive() bool {
	return unix.PidfdSendSignal(l.pidfd, 0, nil, 0) == nil
}

func (l *Lowered) restore() error {
	var err error
	for range restorePasses {
		var tids []int
		tids, err = threads(l.pid)
		// Alive after the listing: the threads listed are its own (its pid
		// was not reused meanwhile).
		if errors.Is(err, os.ErrNotExist) || !l.alive() {
			err = nil // exited: nothing is lowered any more
			break
		}
		if err != nil {
			break
		}
		changed := false
		for _, tid := range tids {
			cur, gerr := unix.SchedGetAttr(tid, 0)
			if gerr != nil || cur.Policy != unix.SCHED_IDLE {
				continue // exited, or not lowered
			}
			want, ok := l.old[tid]
			if !ok {
				want = l.main
			}
			want.Size = unix.SizeofSchedAttr
			if serr := unix.SchedSetAttr(tid, &want, 0); serr != nil && !errors.Is(serr, unix.ESRCH) {
				err = errors.Join(err, fmt.Errorf("restore thread %d of process %d: %w", tid, l.pid, serr))
				continue
			}
			changed = true
		}
		if !changed || err != nil {
			break
		}
	}
	if l.group && err == nil {
		// Through the process, or when it exited through another member
		// of its session (a supervisor whose QEMU died): the group
		// outlives the process while others are in it.
		pid, ok := l.pid, true
		if g, _, alive := group(pid); !alive || g != l.groupID || !l.alive() {
			pid, ok = groupMember(l.groupID) // none: the group is gone
		}
		if ok {
			if gerr := setGroupNice(pid, l.groupOld); gerr != nil {
				err = fmt.Errorf("restore the autogroup of process %d: %w", pid, gerr)
			}
		}
		l.group = err != nil
	}
	l.done = err == nil
	return err
}

// threads lists the thread ids of process pid.
func threads(pid int) ([]int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// mayRaise reports whether this process may put a thread of process pid
// back from SCHED_IDLE to nice (the kernel's rule in sched_setscheduler:
// CAP_SYS_NICE, or the target's RLIMIT_NICE allowing that nice value).
func mayRaise(pid, nice int) bool {
	if hasCapSysNice() {
		return true
	}
	var lim unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NICE, nil, &lim); err != nil {
		return false
	}
	return uint64(20-nice) <= lim.Cur
}

// hasCapSysNice reports whether this process holds CAP_SYS_NICE.
func hasCapSysNice() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	return unix.Capget(&hdr, &data[0]) == nil && data[0].Effective&(1<<unix.CAP_SYS_NICE) != 0
}
