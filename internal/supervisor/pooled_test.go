package supervisor

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// fakePause stands for QEMU's stop and cont.
type fakePause struct {
	paused, resumed, closed atomic.Bool
	failResume              bool
}

func (p *fakePause) Resume(context.Context) error {
	if p.failResume {
		return errors.New("qmp: cont failed")
	}
	p.resumed.Store(true)
	return nil
}
func (p *fakePause) Close() error { p.closed.Store(true); return nil }

// pooledFixture serves a pooled workspace in this process; the returned
// conn is the pool's end of its link.
func pooledFixture(t *testing.T, p *fakePause, identified *atomic.Int32) (vmdir.Dir, net.Conn, <-chan error) {
	t.Helper()
	dir := newInstance(t, instance.Record{Kind: instance.KindPooled})
	pool, link := net.Pipe()
	_, done := serve(t, dir, Options{PoolLink: link,
		Pause: func(context.Context, *vm.VM) (PausedGuest, error) { p.paused.Store(true); return p, nil },
		Identity: func(context.Context, *vm.VM) error {
			identified.Add(1)
			return nil
		}})
	t.Cleanup(func() { pool.Close() })
	return dir, pool, done
}

// A pooled supervisor boots, is primed through its agent, pauses (its
// agent refused and no health call made meanwhile), and its claim resumes
// it with a new identity: from then on it is an ordinary workspace that
// the end of its pool's link does not touch.
func TestPooledPauseClaim(t *testing.T) {
	var p fakePause
	var identified atomic.Int32
	dir, pool, done := pooledFixture(t, &p, &identified)
	st := waitState(t, dir, instance.Running)
	if !st.Pooled || st.Paused {
		t.Fatalf("pooled before the pause: %+v", st)
	}
	c := NewClient(dir)
	ctx := context.Background()
	// A claim before the pause is refused: only a primed, paused guest
	// is handed out.
	if _, err := c.PoolClaim(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("claim of an unpaused guest: %v", err)
	}
	agent := c.Agent()
	if _, err := agent.Exec(ctx, agentapi.ExecRequest{Shell: "true", TimeoutMS: 10000}, nil); err != nil {
		t.Fatal(err)
	}
	agent.Close()
	st, err := c.PoolPause(ctx)
	if err != nil || !st.Paused || !p.paused.Load() {
		t.Fatalf("pause: %+v %v", st, err)
	}
	if st := waitState(t, dir, instance.Running); !st.Paused || !st.Pooled {
		t.Fatalf("a paused guest's status: %+v", st)
	}
	agent = c.Agent()
	if _, err := agent.Health(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("agent of a paused guest: %v", err)
	}
	agent.Close()
	st, err = c.PoolClaim(ctx)
	if err != nil || st.Pooled || st.Paused || st.Start != StartPool || !p.resumed.Load() || !p.closed.Load() || identified.Load() != 1 {
		t.Fatalf("claim: %+v %v (resumed %v, qmp closed %v, identities %d)", st, err, p.resumed.Load(), p.closed.Load(), identified.Load())
	}
	if _, err := c.PoolClaim(ctx); err == nil {
		t.Fatal("a second claim succeeded")
	}
	// The pool goes away: a claimed workspace lives on.
	pool.Close()
	time.Sleep(100 * time.Millisecond)
	st = waitState(t, dir, instance.Running)
	agent = c.Agent()
	defer agent.Close()
	if _, err := agent.Health(ctx); err != nil {
		t.Fatalf("claimed workspace after its pool ended: %+v %v", st, err)
	}
	select {
	case err := <-done:
		t.Fatalf("supervisor ended with its pool: %v", err)
	default:
	}
}

// An unclaimed pooled supervisor whose pool goes away (stopped or killed:
// its end of the link closes) stops its guest and removes its directory.
func TestPooledEndsWithPool(t *testing.T) {
	for _, pause := range []bool{false, true} {
		var p fakePause
		var identified atomic.Int32
		dir, pool, done := pooledFixture(t, &p, &identified)
		waitState(t, dir, instance.Running)
		if pause {
			if _, err := NewClient(dir).PoolPause(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		pool.Close()
		waitDone(t, done)
		if _, err := os.Stat(string(dir)); !os.IsNotExist(err) {
			t.Errorf("paused %v: the unclaimed workspace's directory is left: %v", pause, err)
		}
		if identified.Load() != 0 {
			t.Errorf("paused %v: an unclaimed guest got an identity", pause)
		}
	}
}

// A pooled supervisor without a link (its pool died before it started)
// ends at once, leaving nothing.
func TestPooledWithoutLink(t *testing.T) {
	dir := newInstance(t, instance.Record{Kind: instance.KindPooled})
	_, done := serve(t, dir, Options{})
	waitDone(t, done)
	if _, err := os.Stat(string(dir)); !os.IsNotExist(err) {
		t.Fatalf("directory left: %v", err)
	}
}

// A claim whose resume fails ends the supervisor (the pool then discards
// the directory; the claimer starts a workspace the usual way).
func TestPooledClaimFailure(t *testing.T) {
	p := fakePause{failResume: true}
	var identified atomic.Int32
	dir, _, done := pooledFixture(t, &p, &identified)
	waitState(t, dir, instance.Running)
	c := NewClient(dir)
	if _, err := c.PoolPause(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PoolClaim(context.Background()); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("failed claim: %v", err)
	}
	waitDone(t, done)
	if n, ok := instance.ReadExit(dir); !ok || n.State != instance.Broken {
		t.Fatalf("exit note %+v %v", n, ok)
	}
	if identified.Load() != 0 {
		t.Fatal("identity refreshed after a failed resume")
	}
}
