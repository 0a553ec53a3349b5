package vm

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/unixsock"
)

// Two-phase fork restore (issue #14). Under TCG a fork's restore is CPU
// bound: loading the saved state (QEMU reads ~130 MB of RAM), then the
// guest running its identity call, whose code every fork's QEMU
// translates afresh. With a gate, every fork first loads its state and
// waits with its vCPU paused (no CPU at all); once all have loaded (or
// given up), the gate lets them run a few at a time (one per host core),
// the next as soon as one is done. The loads overlap each other and the
// host's steps (supervisor, QEMU start), and a fork that runs has a core
// to itself. Letting all run at once was measured worse: ten TCG guests
// sharing 2 cores took ~4.6 s each for their identity, and a running
// guest's CPU grows with its wall time (its timer ticks, its agent's
// runtime), so the forks' CPU to identity went from ~450 to ~800 ms each.
//
// The gate is a unix socket in the fork's private staging directory,
// served by the process that runs the fork (ForkGate). A fork's restore
// connects once its state is loaded (the connection is its arrival) and
// continues when the gate writes a byte or closes, or after
// forkGateWait. Nothing is read from the connection but that: the gate
// only orders restores, so any failure of it lets the fork continue.
// After its byte the gate keeps the connection open until every fork's
// start returned (or the gate closes): meanwhile a fork that has its
// identity runs at idle priority (forkyield.go), and the connection's
// close, also by the death of the process serving the gate, ends that.

// forkGateWait bounds a fork's wait at the gate (a variable for tests):
// ten forks of a debian:12 workspace load in ~1.5 s and run in ~3 s on 2
// idle cores; a fork never waits longer than this for its siblings.
var forkGateWait = 30 * time.Second

// ForkGate holds the restores of n forks until all have loaded, then lets
// them run parallel at a time.
type ForkGate struct {
	path     string
	ln       net.Listener
	n        int
	parallel int
	mu       sync.Mutex
	waiting  []net.Conn
	let      []net.Conn // let go, kept open until every fork is done
	arrived  int
	done     int // forks whose start returned (Done)
	running  int // let go and not yet done
	full     bool
	closed   bool
	stop     chan struct{}
	// fullAt: when the last fork arrived (or the wait ran out).
	fullAt time.Time
}

// OpenForkGate serves a gate for n forks at path (a unix socket in a
// private directory), letting parallel of them run at a time once all
// have arrived. It opens whole by itself after forkGateWait.
func OpenForkGate(path string, n, parallel int) (*ForkGate, error) {
	ln, err := unixsock.Listen(path)
	if err != nil {
		return nil, err
	}
	g := &ForkGate{path: path, ln: ln, n: n, parallel: max(1, parallel), stop: make(chan struct{})}
	go g.accept()
	opens := time.After(forkGateWait)
	go func() {
		select {
		case <-opens:
			g.open()
		case <-g.stop:
		}
	}()
	return g, nil
}

// Path is where the gate is served.
func (g *ForkGate) Path() string { return g.path }

func (g *ForkGate) accept() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		g.arrived++
		g.waiting = append(g.waiting, c)
		g.step()
		g.mu.Unlock()
	}
}

// Done says one fork's start returned (running, or failed before or after
// it arrived): the next waiting fork may run. A fork that failed before it
// arrived counts as arrived, so the others are not held for it (one that
// failed after it arrived counts twice: the gate then lets go a little
// early, which costs speed only).
func (g *ForkGate) Done() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.done++
	if g.running > 0 {
		g.running--
	}
	g.step()
}

// step lets waiting forks go as the gate's state allows; under mu.
func (g *ForkGate) step() {
	if !g.full && g.arrived+g.done >= g.n {
		g.full, g.fullAt = true, time.Now()
	}
	for len(g.waiting) > 0 && (g.closed || (g.full && g.running < g.parallel)) {
		c := g.waiting[0]
		g.waiting = g.waiting[1:]
		g.running++
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.Write([]byte{1})
		g.let = append(g.let, c)
	}
	if g.closed || g.done >= g.n {
		// Every fork's start returned (or the gate is done): the forks
		// that yielded meanwhile take their share again.
		for _, c := range g.let {
			c.Close()
		}
		g.let = nil
	}
}

// open lets every fork go, waiting or still to come.
func (g *ForkGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.full {
		g.full, g.fullAt = true, time.Now()
	}
	g.closed = true
	g.step()
}

// Loaded says when every fork had arrived (or the wait ran out) and how
// many had arrived by then.
func (g *ForkGate) Loaded() (at time.Time, arrived int, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fullAt, g.arrived, g.full
}

// Close lets every fork go and stops serving the gate.
func (g *ForkGate) Close() error {
	g.open()
	g.mu.Lock()
	select {
	case <-g.stop:
	default:
		close(g.stop)
	}
	g.mu.Unlock()
	return g.ln.Close()
}

// waitForkGate is a fork's side: it arrives at the gate at path and
// returns once the gate opened, the gate failed, ctx ended, or
// forkGateWait passed; it reports whether the gate let it go, and
// returns the connection when the gate let it go with its byte and kept
// it open (the caller closes it: its close says every fork is done).
func waitForkGate(ctx context.Context, path string) (held net.Conn, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, forkGateWait)
	defer cancel()
	c, err := unixsock.Dial(ctx, path)
	if err != nil {
		return nil, false, err
	}
	defer func() {
		if held == nil {
			c.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	var b [1]byte
	_, err = c.Read(b[:])
	if !stop() || ctx.Err() != nil {
		return nil, false, ctx.Err()
	}
	_ = c.SetReadDeadline(time.Time{})
	switch {
	case err == nil: // its byte
		return c, true, nil
	case errors.Is(err, io.EOF): // its close: it let go too
		return nil, true, nil
	}
	return nil, false, err
}
