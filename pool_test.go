package pyro

import (
	"context"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/pool"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// fakePooled is a pooled guest on the fake backend: the real agent, in
// memory. Its hand-out records the id instead of refreshing the identity
// (the fake agent runs on the host: its clock and hostname are the host's).
type fakePooled struct {
	id     string
	m      vmm.Machine
	agent  *agentapi.Client
	as     atomic.Value
	closed atomic.Bool
}

func (g *fakePooled) ID() string { return g.id }
func (g *fakePooled) Info() pool.GuestInfo {
	return pool.GuestInfo{Backend: "qemu", Acceleration: "tcg", Isolation: "vm", Start: "warm", BootMS: 5}
}
func (g *fakePooled) HandOut(_ context.Context, to pool.Claimer) error { g.as.Store(to.ID); return nil }
func (g *fakePooled) OpenStream(ctx context.Context) (net.Conn, error) {
	return g.agent.OpenStream(ctx)
}
func (g *fakePooled) Done() <-chan struct{} { return g.m.Done() }
func (g *fakePooled) Close() error {
	g.closed.Store(true)
	g.agent.Close()
	return g.m.Stop(context.Background())
}

func TestRunServedByPool(t *testing.T) {
	root := t.TempDir()
	c, err := New(Options{StateDir: root, Binary: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := newRecord(instance.KindRun, CreateVMOptions{Environment: "debian:12-base", VCPUCount: 1, MemMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	rec.EnvironmentDigest = "sha256:test"
	var mu sync.Mutex
	var made []*fakePooled
	first := func() *fakePooled { mu.Lock(); defer mu.Unlock(); return made[0] }
	fill := func(ctx context.Context) (pool.Guest, error) {
		id := vmdir.NewID()
		dir := vmdir.Dir(t.TempDir())
		m, err := fakevmm.New(vmm.Features{}).Start(ctx, vmm.Spec{ID: id, Dir: dir})
		if err != nil {
			return nil, err
		}
		g := &fakePooled{id: id, m: m, agent: agentapi.NewClient(m.DialAgent)}
		mu.Lock()
		made = append(made, g)
		mu.Unlock()
		return g, nil
	}
	srv, err := pool.Start(pool.Config{Root: root, Key: poolKey(rec), Size: 1, Fill: fill})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.WaitReady(ctx, 1); err != nil {
		t.Fatal(err)
	}
	opts := RunOptions{Environment: "debian:12-base", VCPUCount: 1, MemMiB: 256, ExecOptions: ExecOptions{Command: []string{"echo pooled"}}}
	req, err := opts.execRequest()
	if err != nil {
		t.Fatal(err)
	}
	out, ok, err := c.runPooled(ctx, rec, opts, req, time.Now())
	if err != nil || !ok {
		t.Fatalf("runPooled: ok %v, err %v", ok, err)
	}
	if out.Start != StartPool || out.Stdout != "pooled\n" || out.ExitCode != 0 || out.VMID != rec.ID || out.Backend != "qemu" {
		t.Fatalf("result %+v", out)
	}
	if got := first().as.Load(); got != rec.ID {
		t.Fatalf("guest handed out as %v, want %s", got, rec.ID)
	}
	// The lease ended with the run: the pool destroyed the guest.
	deadline := time.Now().Add(5 * time.Second)
	for !first().closed.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !first().closed.Load() {
		t.Fatal("the pooled guest outlived its run")
	}

	// Another configuration, a networked run and PYRO_POOL=0 are not
	// served: the caller starts a guest the usual way.
	if err := srv.WaitReady(ctx, 1); err != nil {
		t.Fatal(err)
	}
	other := rec
	other.MemMiB = 512
	if _, ok, _ := c.runPooled(ctx, other, opts, req, time.Now()); ok {
		t.Fatal("a run of another configuration was served by the pool")
	}
	netRec, err := newRecord(instance.KindRun, CreateVMOptions{Environment: "debian:12-base", VCPUCount: 1, MemMiB: 256, Network: true})
	if err != nil {
		t.Fatal(err)
	}
	netRec.EnvironmentDigest = rec.EnvironmentDigest
	if _, ok, _ := c.runPooled(ctx, netRec, opts, req, time.Now()); ok {
		t.Fatal("a networked run was served by the pool")
	}
	t.Setenv(PoolEnv, "0")
	if _, ok, _ := c.runPooled(ctx, rec, opts, req, time.Now()); ok {
		t.Fatal("PYRO_POOL=0 was served by the pool")
	}
	os.Unsetenv(PoolEnv)
}
