package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// TestQuietClaim: a quiet epoch can be claimed once, only while no other
// call is under way and no user process is left; agents start at
// different epochs.
func TestQuietClaim(t *testing.T) {
	idle, busy := func() bool { return true }, func() bool { return false }
	q := newQuiet()
	if newQuiet().current() == q.current() {
		t.Fatal("two agents start at the same epoch")
	}
	e := q.current()
	q.reseed([]byte("host entropy"))
	if q.current() == e {
		t.Fatal("reseed kept the epoch")
	}
	e = q.current()
	if q.claim(e, busy) {
		t.Fatal("claimed with a user process left")
	}
	if q.claim(0, idle) || q.claim(e+1, idle) {
		t.Fatal("claimed a wrong epoch")
	}
	if !q.claim(e, idle) {
		t.Fatal("quiet epoch refused")
	}
	if q.idleAt(e + 1) {
		t.Fatal("idle while the claiming call runs")
	}
	q.end()
	if !q.idleAt(e + 1) {
		t.Fatal("not idle after the claiming call")
	}
	if q.claim(e, idle) {
		t.Fatal("claimed the same epoch twice")
	}
	e = q.current()
	q.begin() // another call under way
	if q.claim(e+1, idle) {
		t.Fatal("claimed while another call runs")
	}
	q.end()
}

// TestExecQuietRefused: an exec through PathExecQuiet whose epoch does
// not hold runs nothing and says so; a plain call moves the epoch on.
func TestExecQuietRefused(t *testing.T) {
	other := New(Options{}) // an epoch of another agent process
	c := newTestClient(t, Options{})
	ctx := testCtx(t)
	marker := filepath.Join(t.TempDir(), "ran")
	_, ran, err := c.ExecQuiet(ctx, agentapi.ExecRequest{Argv: []string{"touch", marker}}, other.quiet.current(), nil)
	if ran || !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("ran %v err %v", ran, err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the refused command ran")
	}
	// Without a user cgroup nothing says the guest is quiet: no report.
	if _, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"true"}}, nil); err != nil {
		t.Fatal(err)
	}
	rep, err := c.Quiet(ctx, 0)
	if err != nil || rep != nil {
		t.Fatalf("%+v %v", rep, err)
	}
}

// TestQuietSettles: a quiet report asked for while a call is under way
// (the exec it follows still finishing after its answer) waits for it to
// end and reports the epoch then; its wait is bounded.
func TestQuietSettles(t *testing.T) {
	q := newQuiet()
	q.begin()
	e := q.current()
	got := make(chan uint64, 1)
	go func() {
		v, ok := q.settle(context.Background())
		if !ok {
			v = 0
		}
		got <- v
	}()
	select {
	case v := <-got:
		t.Fatalf("settled at %d with a call under way", v)
	case <-time.After(50 * time.Millisecond):
	}
	q.end()
	select {
	case v := <-got:
		if v != e || !q.idleAt(e) {
			t.Fatalf("settled at %d, want %d", v, e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still waiting after the call ended")
	}
	q.begin()
	defer q.end()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, ok := q.settle(ctx); ok {
		t.Fatal("settled with a call under way")
	}
}

// TestSectorsWritten: a sync's flush (one more write request, no sector)
// leaves the counters as they were; a write or a discard moves them.
func TestSectorsWritten(t *testing.T) {
	before := "10 0 74 8 21 15 272 64 0 32 88 0 0 0 0 9 16"
	flushed := "10 0 74 8 22 15 272 76 0 44 112 0 0 0 0 10 28"
	written := "10 0 74 8 23 15 280 80 0 48 120 0 0 0 0 11 32"
	discarded := "10 0 74 8 22 15 272 76 0 44 112 1 0 8 0 10 28"
	a, err := sectorsWritten(before)
	b, _ := sectorsWritten(flushed)
	c, _ := sectorsWritten(written)
	d, _ := sectorsWritten(discarded)
	if err != nil || a != b || a == c || a == d {
		t.Fatalf("%q %q %q %q %v", a, b, c, d, err)
	}
	if _, err := sectorsWritten("1 2 3"); err == nil {
		t.Fatal("short stat accepted")
	}
}

// TestQuietReseedFromHostEntropy: after a restore the epoch comes from the
// host's bytes alone (no guest RNG read, no hash: code a restored guest
// would translate afresh on its identity call), so clones given different
// bytes start at different epochs, and never at 0.
func TestQuietReseedFromHostEntropy(t *testing.T) {
	a, b, c := newQuiet(), newQuiet(), newQuiet()
	e1 := make([]byte, agentapi.IdentityEntropyBytes)
	e2 := make([]byte, agentapi.IdentityEntropyBytes)
	e1[3], e2[60] = 1, 1
	a.reseed(e1)
	b.reseed(e2)
	c.reseed(e1)
	if a.current() == b.current() {
		t.Fatalf("clones with different host entropy share epoch %d", a.current())
	}
	if a.current() != c.current() {
		t.Fatalf("epoch %d vs %d from the same host bytes: the guest's own randomness was mixed in", a.current(), c.current())
	}
	z := newQuiet()
	z.reseed(make([]byte, agentapi.IdentityEntropyBytes))
	if z.current() == 0 {
		t.Fatal("epoch 0")
	}
}
