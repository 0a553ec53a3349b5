// Package reaper is the part every PID 1 of ours shares (the guest's init
// and the host-compat sandbox's init): collecting every exited process, and
// ending all of them at shutdown. Orphans are re-parented to PID 1, so
// without it they stay zombies forever and fill the PID table.
package reaper

import (
	"errors"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Reap collects every exited child without blocking, calling exited (if
// not nil) with each pid and status. Call it on every SIGCHLD: one signal
// may stand for many exits.
func Reap(exited func(pid int, ws unix.WaitStatus)) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		if exited != nil {
			exited(pid, ws)
		}
	}
}

// KillAll ends every process this PID 1 can signal: SIGTERM, reaping until
// none is left or grace has passed, then SIGKILL to what remains. Meant for
// a PID 1 that is about to power off or exit.
func KillAll(grace time.Duration) {
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.ECHILD) {
			break
		}
		if pid <= 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	_ = unix.Kill(-1, unix.SIGKILL)
}

// Describe says how a process ended: "exit code N" or "signal SIGX".
func Describe(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + unix.SignalName(ws.Signal())
	}
	return "exit code " + strconv.Itoa(ws.ExitStatus())
}
