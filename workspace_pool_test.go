package pyro

import (
	"context"
	"os"
	"testing"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// pooledDir makes the directory a workspace pool would have made for rec
// (no supervisor: adoption only reads and rewrites the record).
func pooledDir(t *testing.T, c *Client, rec instance.Record) vmdir.Dir {
	t.Helper()
	rec.Kind = instance.KindPooled
	dir, _, err := c.lc.Create(context.Background(), rec, func(dir vmdir.Dir, r *instance.Record) error {
		r.WorkspaceDisk, r.WorkspaceBase = dir.Path(workspace.DiskFile), dir.Path(workspace.BaseFile)
		return instance.WriteCreator(dir)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// The claimer checks what the pool handed it against what it asked for
// before the workspace becomes its: a match becomes an ordinary workspace
// with the claimer's name and labels, complete; a workspace of another
// configuration is deleted (the create then starts one the usual way).
func TestAdoptPooledChecksThePool(t *testing.T) {
	c, err := New(Options{StateDir: t.TempDir(), Binary: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want, err := newRecord(instance.KindWorkspace, CreateVMOptions{Environment: "debian:12-base", VCPUCount: 1, MemMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	want.EnvironmentDigest = "sha256:test"
	opts := CreateWorkspaceOptions{Name: "from-pool", Labels: map[string]string{"team": "a"}, Checkpoints: true}

	good := want
	good.ID = vmdir.NewID()
	dir := pooledDir(t, c, good)
	if _, _, err := c.lc.Open(instance.KindWorkspace, good.ID); err == nil {
		t.Fatal("a pooled workspace opened as a workspace before its claim")
	}
	if _, err := c.adoptPooled(ctx, want, good.ID, opts); err != nil {
		t.Fatal(err)
	}
	_, rec, err := c.lc.Open(instance.KindWorkspace, good.ID)
	if err != nil {
		t.Fatal(err)
	}
	m := metaOf(rec)
	if rec.Kind != instance.KindWorkspace || m.Name != "from-pool" || m.Labels["team"] != "a" || !m.Checkpoints || m.Seed.Mode != "empty" {
		t.Fatalf("adopted record %+v meta %+v", rec, m)
	}
	if pid, _ := instance.Creator(dir); pid != 0 {
		t.Fatal("the adopted workspace is still marked half-made")
	}

	for name, lie := range map[string]func(*instance.Record){
		"memory": func(r *instance.Record) { r.MemMiB = 512 },
		"digest": func(r *instance.Record) { r.EnvironmentDigest = "sha256:other" },
		"env":    func(r *instance.Record) { r.Environment = "debian:12" },
	} {
		bad := want
		bad.ID = vmdir.NewID()
		lie(&bad)
		dir := pooledDir(t, c, bad)
		if _, err := c.adoptPooled(ctx, want, bad.ID, opts); err == nil {
			t.Errorf("%s: a pooled workspace of another configuration was adopted", name)
		}
		if _, err := os.Stat(string(dir)); !os.IsNotExist(err) {
			t.Errorf("%s: the refused workspace is left: %v", name, err)
		}
	}
	// A pooled workspace not handed to this process (another pool's,
	// still unclaimed, or another claimer's) is refused and left alone.
	other := want
	other.ID = vmdir.NewID()
	otherDir := pooledDir(t, c, other)
	if err := instance.WriteCreatorPID(otherDir, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.adoptPooled(ctx, want, other.ID, opts); err == nil {
		t.Error("a pooled workspace handed to another process was adopted")
	}
	if rec, err := instance.Load(otherDir, instance.KindPooled); err != nil || rec.Kind != instance.KindPooled {
		t.Errorf("a refused adoption changed or removed another's pooled workspace: %+v %v", rec, err)
	}
	// An id the pool names that is no pooled workspace is refused, and
	// left alone: the pool's word deletes nothing of the user's.
	if _, err := c.adoptPooled(ctx, want, good.ID, opts); err == nil {
		t.Error("an ordinary workspace was adopted again")
	}
	if _, _, err := c.lc.Open(instance.KindWorkspace, good.ID); err != nil {
		t.Errorf("a refused adoption removed an existing workspace: %v", err)
	}
	// Nor does it write the claimer's secrets into it (or push them to
	// its guest).
	withSecret := opts
	withSecret.Secrets = []Secret{{Name: "TOKEN", Value: "claimer-secret"}}
	if _, err := c.adoptPooled(ctx, want, good.ID, withSecret); err == nil {
		t.Error("an ordinary workspace was adopted again with secrets")
	}
	if values, err := loadSecrets(dir); err != nil || len(values) != 0 {
		t.Errorf("a refused adoption wrote the claimer's secrets into an existing workspace: %v %v", values, err)
	}
}
