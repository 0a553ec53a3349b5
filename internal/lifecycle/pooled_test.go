package lifecycle

import (
	"context"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

type noPause struct{}

func (noPause) Resume(context.Context) error { return nil }
func (noPause) Close() error                 { return nil }

// link is a pool's link to a pooled supervisor: the pool's end and the
// supervisor's (to pass at its spawn, then close here).
func link(t *testing.T) (ours, theirs *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil { // read deadlines
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "pool"), os.NewFile(uintptr(fds[1]), "supervisor")
}

// startPooled makes and starts a pooled workspace whose creator is this
// process (the pool), primed and paused.
func startPooled(t *testing.T, f *fixture) (vmdir.Dir, instance.Record, *os.File) {
	t.Helper()
	rec := newRecord(instance.KindPooled)
	dir, rec, err := f.m.Create(context.Background(), rec, func(dir vmdir.Dir, _ *instance.Record) error { return instance.WriteCreator(dir) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { supervisor.Kill(dir) })
	ours, theirs := link(t)
	t.Cleanup(func() { ours.Close() })
	st, err := f.m.StartPooled(context.Background(), dir, rec, theirs)
	theirs.Close()
	if err != nil || st.State != instance.Running || !st.Pooled {
		t.Fatalf("start pooled: %+v %v", st, err)
	}
	if st, err := f.m.PausePooled(context.Background(), dir); err != nil || !st.Paused {
		t.Fatalf("pause: %+v %v", st, err)
	}
	return dir, rec, ours
}

// A pooled workspace lives in the workspaces' directory, invisible to
// workspace commands until claimed; a claim makes the claimer its creator
// and its supervisor outlives the pool's link; the record is then the
// claimer's to complete.
func TestPooledClaimOutlivesPool(t *testing.T) {
	f := newFixture(t)
	dir, rec, ours := startPooled(t, f)
	if _, _, err := f.m.Open(instance.KindWorkspace, rec.ID); err == nil {
		t.Fatal("an unclaimed pooled workspace opens as a workspace")
	}
	if _, recs, _ := f.m.List(instance.KindWorkspace); len(recs) != 0 {
		t.Fatalf("listed: %+v", recs)
	}
	st, err := f.m.ClaimPooled(context.Background(), dir, os.Getpid())
	if err != nil || st.Start != supervisor.StartPool || st.Pooled {
		t.Fatalf("claim: %+v %v", st, err)
	}
	if pid, alive := instance.Creator(dir); pid != os.Getpid() || !alive {
		t.Fatalf("creator %d %v", pid, alive)
	}
	// The claimed supervisor lets go of its end of the link at once
	// (the pool's end then reads EOF and the pool frees it).
	_ = ours.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := ours.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the pool's end of a claimed workspace's link: %v, want EOF", err)
	}
	ours.Close() // the pool ends
	time.Sleep(200 * time.Millisecond)
	if st := f.m.Observe(context.Background(), dir, rec); st.State != instance.Running {
		t.Fatalf("claimed workspace after its pool ended: %+v", st)
	}
	// DiscardPooled never touches a workspace its claimer completed.
	if err := f.m.Update(context.Background(), dir, instance.KindPooled, func(r *instance.Record) error {
		r.Kind = instance.KindWorkspace
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.m.DiscardPooled(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if st := f.m.Observe(context.Background(), dir, rec); st.State != instance.Running {
		t.Fatalf("discard ended a claimed workspace: %+v", st)
	}
}

// The end of its pool's link ends an unclaimed pooled workspace: its
// supervisor (a separate, detached process) exits and its directory goes.
func TestPooledDiscardedWithPool(t *testing.T) {
	f := newFixture(t)
	dir, _, ours := startPooled(t, f)
	pid, alive := instance.SupervisorPid(dir)
	if !alive {
		t.Fatal("no supervisor")
	}
	ours.Close()
	if err := f.m.DiscardPooled(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(string(dir)); !os.IsNotExist(err) {
		t.Fatalf("directory left: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for unix.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		time.Sleep(20 * time.Millisecond)
	}
	if unix.Kill(pid, 0) == nil {
		t.Fatal("the unclaimed supervisor outlived its pool")
	}
}

// A pool killed before it discarded its workspace: reconcile removes the
// pooled workspace whose creator (the pool) is dead.
func TestReconcileRemovesDeadPoolsWorkspace(t *testing.T) {
	f := newFixture(t)
	rec := newRecord(instance.KindPooled)
	dir, _, err := f.m.Create(context.Background(), rec, func(dir vmdir.Dir, _ *instance.Record) error {
		return os.WriteFile(dir.Path(vmdir.Creator), []byte("999999999 1\n"), 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	f2 := newFixture(t)
	f2.dirs = f.dirs
	f2.m = New(Config{Dirs: f.dirs, Binary: f.m.cfg.Binary})
	if r := f2.m.Reconcile(context.Background()); r.HalfMade != 1 {
		t.Fatalf("reconcile: %+v", r)
	}
	if _, err := os.Stat(string(dir)); !os.IsNotExist(err) {
		t.Fatalf("directory left: %v", err)
	}
}
