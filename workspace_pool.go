package pyro

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/pool"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Workspace pools (issue #14): `pyro pool start --workspace`, an MCP
// server's --pool-workspace N, or StartPool with Workspace set keeps whole
// workspaces ready for `workspace create`: each one an ordinary workspace
// directory (its final id, fresh copies of the cached empty disk and
// baseline templates that an unseeded create starts from) with its own
// detached supervisor, whose guest was restored, got /workspace mounted,
// ran a priming command and waits paused. The record's kind is "pooled"
// until a create claims it, so no workspace command sees it before.
//
// A claim (CreateWorkspace with no seed, no network, no host-compat, of
// the pool's environment, vCPUs and memory) resumes the guest with a fresh
// identity (kernel RNG state, clock, hostname, machine-id); the create
// materialises its secrets, if any, while the workspace is still invisible
// to every other command, then completes the record with its name, labels
// and options: the workspace is the claimer's for good and outlives the
// pool. Nothing of a claimer reaches the pool or another claimer: the pool
// hands each workspace out once, a workspace holds no user data before its
// claim, and the pool keeps its runs' rules (socket 0600 in a 0700
// directory, peer uid checked, bounded requests and replies validated by
// the claimer).
//
// An unclaimed pooled supervisor holds one end of a socket pair whose
// other end is the pool's: when the pool stops or is killed, the
// supervisor stops its guest and removes its directory itself. What a
// pool killed at the wrong instant still leaves is half-made (its creator
// is dead) and goes with the next reconcile.

// workspacePoolable says whether a create may be served by a pool.
func workspacePoolable(opts CreateWorkspaceOptions, rec instance.Record) bool {
	return os.Getenv(PoolEnv) != "0" && os.Getenv(vm.WarmEnv) != "0" && opts.SeedPath == "" && opts.ProjectPath == "" &&
		!opts.AllowHostCompat && !rec.Network && !rec.Policy().Normalized().Mode.Networked()
}

// workspacePoolKey is the pool configuration of a workspace record.
func workspacePoolKey(rec instance.Record) pool.Key {
	k := poolKey(rec)
	k.Workspace = true
	return k
}

// createPooled creates a workspace from a pooled one when a pool of rec's
// configuration has one ready; ok is false otherwise (and after a failed
// adoption: the caller then creates one the usual way).
func (c *Client) createPooled(ctx context.Context, opts CreateWorkspaceOptions, rec instance.Record) (ws Workspace, ok bool, err error) {
	if !workspacePoolable(opts, rec) {
		return ws, false, nil
	}
	release, err := c.claimName(ctx, opts.Name, opts.Labels)
	if err != nil {
		return ws, true, err
	}
	defer func() {
		if release != nil {
			release()
		}
	}()
	lease, err := pool.Claim(ctx, c.dirs.Root, workspacePoolKey(rec), rec.ID)
	if err != nil {
		if !errors.Is(err, pool.ErrNoPool) {
			c.logger.Debug("no pooled workspace; creating one", "err", err)
		}
		return ws, false, nil
	}
	_ = lease.Close() // a workspace pool's claim has no lease
	_, err = c.adoptPooled(ctx, rec, lease.Guest, opts)
	release()
	release = nil
	if err != nil {
		c.logger.Warn("adopt a pooled workspace; creating one instead", "workspace_id", lease.Guest, "err", err)
		return ws, false, nil
	}
	c.logger.Debug("workspace from the pool", "workspace_id", lease.Guest, "claim_ms", lease.ClaimMS, "handout_ms", lease.HandoutMS)
	ws, err = c.StatusWorkspace(ctx, lease.Guest)
	return ws, true, err
}

// adoptPooled completes the record of the pooled workspace id the pool
// handed out: checked against what the claimer asked for (the pool's word
// is not trusted), then an ordinary workspace with the claimer's name,
// labels and options. A pooled workspace that fails the check is deleted;
// an id that names no pooled workspace, or one not handed to this process
// (its supervisor made this process its creator at the claim), is left
// alone (the pool's word is not enough to delete or take anything else:
// another pool's unclaimed workspace, paused and without its fresh
// identity, whose supervisor removes its directory when its pool goes).
func (c *Client) adoptPooled(ctx context.Context, want instance.Record, id string, opts CreateWorkspaceOptions) (dir vmdir.Dir, err error) {
	if dir, err = vmdir.Open(c.lc.Parent(instance.KindWorkspace), id); err != nil {
		return "", err
	}
	if pid, _ := instance.Creator(dir); pid != os.Getpid() {
		return dir, fmt.Errorf("pooled workspace %s was not handed to this process", id)
	}
	adopted := false
	defer func() {
		if err == nil {
			return
		}
		if cur, lerr := instance.Load(dir, instance.KindPooled); lerr == nil && (adopted || cur.Kind == instance.KindPooled) {
			c.discardAdopted(ctx, dir, cur)
		}
	}()
	secretInfo, secretValues, err := checkSecrets(opts.Secrets)
	if err != nil {
		return dir, err
	}
	if len(secretValues) > 0 {
		// Checked before the secrets are written: an id that names a
		// workspace of the user's must not get (or push to its guest)
		// the claimer's secrets.
		cur, err := instance.Load(dir, instance.KindPooled)
		if err != nil {
			return dir, err
		}
		if err := pooledFits(cur, want, id, dir); err != nil {
			return dir, err
		}
		// Materialised before the record says "workspace": no other
		// command can reach the guest before it has them.
		if err := saveSecrets(dir, secretValues); err != nil {
			return dir, err
		}
		agent := c.lc.Client(dir)
		err = c.prepareGuest(ctx, dir, want, agent)
		agent.Close()
		if err != nil {
			return dir, err
		}
	}
	err = c.lc.Update(ctx, dir, instance.KindPooled, func(r *instance.Record) error {
		if err := pooledFits(*r, want, id, dir); err != nil {
			return err
		}
		r.Kind = instance.KindWorkspace
		r.CreatedAt = want.CreatedAt
		adopted = true
		setMeta(r, workspaceMeta{Seed: workspace.Seed{Mode: "empty"}, Secrets: secretInfo, Name: opts.Name, Labels: opts.Labels,
			Checkpoints: opts.Checkpoints})
		return nil
	})
	if err != nil {
		return dir, err
	}
	instance.AppendEvent(dir, "created", map[string]any{"environment": want.Environment, "start": supervisor.StartPool})
	return dir, instance.DoneCreating(dir)
}

// pooledFits says whether r, the record in dir, is the unclaimed pooled
// workspace id of want's configuration.
func pooledFits(r, want instance.Record, id string, dir vmdir.Dir) error {
	switch {
	case r.Kind != instance.KindPooled || r.ID != id:
		return fmt.Errorf("record of kind %q, id %q", r.Kind, r.ID)
	case r.Environment != want.Environment || r.EnvironmentDigest != want.EnvironmentDigest ||
		r.VCPUCount != want.VCPUCount || r.MemMiB != want.MemMiB || r.Network || r.AllowHostCompat:
		return fmt.Errorf("configuration %s %s %d vCPU %d MiB differs from the create's", r.Environment, r.EnvironmentDigest, r.VCPUCount, r.MemMiB)
	case r.WorkspaceDisk != dir.Path(workspace.DiskFile) || r.WorkspaceBase != dir.Path(workspace.BaseFile):
		return errors.New("disks outside the workspace's directory")
	}
	return nil
}

// discardAdopted deletes a claimed workspace the claimer could not adopt.
func (c *Client) discardAdopted(ctx context.Context, dir vmdir.Dir, rec instance.Record) {
	if _, err := c.lc.Delete(context.WithoutCancel(ctx), dir, rec); err != nil {
		c.logger.Warn("delete an unadoptable pooled workspace", "dir", string(dir), "err", err)
	}
}

// fillWorkspacePool makes one pooled workspace of key: its directory and
// fresh disks, its supervisor (restore and mount), a priming round, and a
// pause.
func (c *Client) fillWorkspacePool(ctx context.Context, key pool.Key) (g pool.Guest, err error) {
	rec, err := newRecord(instance.KindWorkspace, CreateVMOptions{Environment: key.Environment, VCPUCount: key.VCPUs, MemMiB: key.MemMiB})
	if err != nil {
		return nil, err
	}
	rec.Kind = instance.KindPooled
	rec.EnvironmentDigest = key.EnvDigest
	dir, rec, err := c.lc.Create(ctx, rec, func(dir vmdir.Dir, rec *instance.Record) error {
		// The pool's process is the creator until a claim: should it
		// die, reconcile removes what its supervisor did not.
		base, err := c.setUpWorkspaceDir(ctx, dir, rec, true, false)
		if err != nil {
			return err
		}
		setMeta(rec, workspaceMeta{Seed: workspace.Seed{Mode: "empty"}})
		return base.record(dir)
	})
	if err != nil {
		return nil, err
	}
	ours, theirs, err := linkPair()
	if err != nil {
		_ = dir.Remove()
		return nil, err
	}
	pw := &pooledWorkspace{c: c, dir: dir, id: rec.ID, link: ours, done: make(chan struct{})}
	defer func() {
		if err != nil {
			pw.Close()
		}
	}()
	st, err := c.lc.StartPooled(ctx, dir, rec, theirs)
	theirs.Close() // the supervisor holds its own copy
	if err != nil {
		return nil, err
	}
	go pw.watch()
	if err := c.primeWorkspace(ctx, dir); err != nil {
		return nil, fmt.Errorf("warm up the pooled workspace: %w", err)
	}
	if _, err := c.lc.PausePooled(ctx, dir); err != nil {
		return nil, err
	}
	if st.Isolation != "vm" {
		return nil, fmt.Errorf("backend %q runs no VM", st.Backend)
	}
	pw.info = pool.GuestInfo{Backend: st.Backend, Acceleration: st.Acceleration, Isolation: st.Isolation, Start: st.Start, BootMS: st.BootMS, VMMPID: st.VMMPID}
	return pw, nil
}

// primeWorkspace runs, before the pause, what a create and the first
// commands of every workspace run in a freshly restored guest: the agent's
// exec path in /workspace (the guest kernel's fork/exec/exit, the shell,
// ld.so, libc), and the calls of a workspace's status. Under TCG their
// translations live in this QEMU process and survive the pause. The
// commands are pyro's own, before any claimer exists; they write nothing
// to /workspace.
func (c *Client) primeWorkspace(ctx context.Context, dir vmdir.Dir) error {
	agent := c.lc.Client(dir)
	defer agent.Close()
	prime := agentapi.ExecRequest{Shell: poolPrimeShell, Cwd: workspace.Root, TimeoutMS: 30_000}
	if _, err := agent.Exec(ctx, prime, nil); err != nil {
		return err
	}
	if _, err := agent.Health(ctx); err != nil {
		return err
	}
	serviceCounts(ctx, agent)
	workspaceJobs(ctx, agent)
	return nil
}

// linkPair is a pooled supervisor's link to the pool: a connected socket
// pair, close-on-exec (the supervisor gets its end as an inherited
// descriptor, nothing else does).
func linkPair() (ours net.Conn, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("pool link: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "pool-link")
	ours, err = net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("pool link: %w", err)
	}
	return ours, os.NewFile(uintptr(fds[1]), "pool-link"), nil
}

// pooledWorkspace is a pool's workspace waiting for a claim.
type pooledWorkspace struct {
	c    *Client
	dir  vmdir.Dir
	id   string
	info pool.GuestInfo
	link net.Conn
	done chan struct{}
	once sync.Once
}

// watch closes done when the supervisor's end of the link closes (it
// exited, or it was handed out and let go of the link), and closes the
// pool's end: a pool hands out many workspaces in its life.
func (g *pooledWorkspace) watch() {
	var b [1]byte
	_, _ = g.link.Read(b[:])
	_ = g.link.Close()
	close(g.done)
}

func (g *pooledWorkspace) ID() string           { return g.id }
func (g *pooledWorkspace) Info() pool.GuestInfo { return g.info }

func (g *pooledWorkspace) HandOut(ctx context.Context, to pool.Claimer) error {
	t := time.Now()
	_, err := g.c.lc.ClaimPooled(ctx, g.dir, to.PID)
	g.c.logger.Debug("workspace hand-out", "workspace_id", g.id, "ms", time.Since(t).Milliseconds(), "err", err)
	if err == nil {
		_ = g.link.Close() // the workspace is the claimer's: the link means nothing now
	}
	return err
}

func (g *pooledWorkspace) OpenStream(context.Context) (net.Conn, error) {
	return nil, errors.New("a workspace pool hands out workspaces, not agent streams")
}

func (g *pooledWorkspace) Done() <-chan struct{} { return g.done }

// Close ends an unclaimed pooled workspace: closing the link tells its
// supervisor to stop and remove it; DiscardPooled waits for that and
// forces what is left.
func (g *pooledWorkspace) Close() error {
	var err error
	g.once.Do(func() {
		_ = g.link.Close()
		err = g.c.lc.DiscardPooled(context.Background(), g.dir)
	})
	return err
}
