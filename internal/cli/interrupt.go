package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// How a command learns that nobody wants its work any more. Every one of
// these cancels the command's context with an *interruption as the cause,
// so that what the command started is stopped and what it made is removed
// (the SDK's cleanups run on context cancellation), and pyro exits with
// 128+signal like a shell would report it:
//
//   - Ctrl-C (SIGINT) and SIGTERM;
//   - SIGHUP: the terminal or SSH session went away;
//   - a broken pipe on stdout or stderr (`pyro demo | head -5`): Go would
//     die of SIGPIPE at the first such write, before any cleanup, unless
//     SIGPIPE is caught; caught, the write returns EPIPE, and the first
//     EPIPE cancels;
//   - the parent process exiting (its shell was killed), for the commands
//     in watchParentOf.
//
// Started under nohup (SIGHUP ignored), pyro keeps ignoring hangups and
// does not watch its parent: that is what nohup asks for.

// interruption is the cancel cause of a command that was interrupted.
type interruption struct {
	sig syscall.Signal
	why string
}

func (i *interruption) Error() string { return "interrupted (" + i.why + ")" }

// exitCode is what a shell reports for a process killed by sig.
func (i *interruption) exitCode() int { return 128 + int(i.sig) }

// interruptedBy returns the interruption that cancelled ctx, if any.
func interruptedBy(ctx context.Context) (*interruption, bool) {
	var i *interruption
	ok := errors.As(context.Cause(ctx), &i)
	return i, ok
}

// hangupsIgnored reports whether pyro was started with SIGHUP ignored
// (nohup). It must be read before anything calls signal.Notify(SIGHUP),
// which would un-ignore it.
func hangupsIgnored() bool { return signal.Ignored(syscall.SIGHUP) }

// watchSignals turns SIGINT, SIGTERM and SIGHUP (unless nohup) into
// cancel calls until stop is called. SIGPIPE is caught for the rest of
// the process's life but never cancels by itself: the kernel also raises
// it for writes to dead sockets (a supervisor that exited), which are
// ordinary errors. Catching it only keeps Go from dying at a write to a
// broken fd 1 or 2, so that brokenPipeWriter sees the EPIPE, and so that
// the error line written after an interrupted command cannot kill pyro.
func watchSignals(cancel context.CancelCauseFunc, nohup bool) (stop func()) {
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if !nohup {
		sigs = append(sigs, syscall.SIGHUP)
	}
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, sigs...)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-ch:
				switch s {
				case os.Interrupt:
					cancel(&interruption{syscall.SIGINT, "interrupt"})
				case syscall.SIGTERM:
					cancel(&interruption{syscall.SIGTERM, "terminated"})
				case syscall.SIGHUP:
					cancel(&interruption{syscall.SIGHUP, "hangup"})
				}
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

// brokenPipeWriter is stdout or stderr: the first write that fails with
// EPIPE (the reader went away) interrupts the command.
type brokenPipeWriter struct {
	w      io.Writer
	name   string
	cancel context.CancelCauseFunc
}

func (b *brokenPipeWriter) Write(p []byte) (int, error) {
	n, err := b.w.Write(p)
	if err != nil && errors.Is(err, syscall.EPIPE) {
		b.cancel(&interruption{syscall.SIGPIPE, "broken pipe on " + b.name})
	}
	return n, err
}

// Fd lets terminal checks see through to the file.
func (b *brokenPipeWriter) Fd() uintptr {
	if f, ok := b.w.(*os.File); ok {
		return f.Fd()
	}
	return ^uintptr(0)
}

// parentPoll is how often watchParent looks at its parent.
const parentPoll = 250 * time.Millisecond

// watchParent cancels when pyro's parent process exits, which the kernel
// shows as a change of getppid (pyro is re-parented to init or a
// subreaper). Polling getppid is used rather than PR_SET_PDEATHSIG because
// the latter fires when the parent *thread* that forked pyro exits, which
// a multithreaded parent (a Python thread pool, another Go program) does
// while alive and well.
func watchParent(ctx context.Context, cancel context.CancelCauseFunc) {
	ppid := os.Getppid()
	go func() {
		t := time.NewTicker(parentPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if p := os.Getppid(); p != ppid {
					cancel(&interruption{syscall.SIGHUP, fmt.Sprintf("parent process %d exited", ppid)})
					return
				}
			}
		}
	}()
}

// watchParentOf lists the commands that stop and clean up when their
// parent exits: those whose work is lost with their caller (a one-shot
// VM, the demo, a pull) or that would otherwise leave something half-made
// (a workspace being created). Servers are not here: `pyro mcp serve &`
// in a script that then exits must keep serving.
var watchParentOf = map[string]bool{
	"pyro run":              true,
	"pyro demo":             true,
	"pyro demo ollama":      true,
	"pyro vm exec":          true,
	"pyro vm create":        true,
	"pyro workspace create": true,
	"pyro env pull":         true,
}
