package pyro

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// recordWorkspace records a workspace without booting it (the naming code
// never needs a guest), named and labelled like CreateWorkspace does.
func recordWorkspace(t *testing.T, c *Client, name string, labels map[string]string) string {
	t.Helper()
	ctx := context.Background()
	release, err := c.claimName(ctx, name, labels)
	if err != nil {
		t.Fatalf("claim %q: %v", name, err)
	}
	defer release()
	rec := instance.Record{ID: vmdir.NewID(), Kind: instance.KindWorkspace, Environment: DefaultEnvironment, VCPUCount: 1, MemMiB: 256, CreatedAt: time.Now().UTC()}
	_, rec, err = c.lc.Create(ctx, rec, func(_ vmdir.Dir, r *instance.Record) error {
		setMeta(r, workspaceMeta{Name: name, Labels: labels})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rec.ID
}

func newTestClient(t *testing.T) *Client {
	t.Helper()
	c, err := New(Options{StateDir: t.TempDir(), Binary: "/nonexistent/pyro"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestWorkspaceNames(t *testing.T) {
	c := newTestClient(t)
	ctx := context.Background()
	api := recordWorkspace(t, c, "api", map[string]string{"team": "infra", "stage": "dev"})
	web := recordWorkspace(t, c, "", map[string]string{"team": "web"})

	// A name works wherever an id does, and results carry the id.
	ws, err := c.StatusWorkspace(ctx, "api")
	if err != nil || ws.WorkspaceID != api || ws.Name != "api" || ws.Labels["team"] != "infra" {
		t.Fatalf("status by name: %+v %v", ws, err)
	}
	if snaps, err := c.ListSnapshots(ctx, "api"); err != nil || snaps == nil {
		t.Fatalf("snapshots by name: %v %v", snaps, err)
	}
	if _, err := c.StatusWorkspace(ctx, "nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown name: %v", err)
	}

	// A taken name, on create or rename, is already_exists and changes nothing.
	if _, err := c.claimName(ctx, "api", nil); !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.Contains(err.Error(), api) {
		t.Fatalf("create with a taken name: %v", err)
	}
	if _, err := c.UpdateWorkspace(ctx, web, UpdateWorkspaceOptions{Name: "api", Labels: map[string]string{"x": "y"}}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("rename to a taken name: %v", err)
	}
	if ws, _ := c.StatusWorkspace(ctx, web); ws.Name != "" || ws.Labels["x"] != "" {
		t.Fatalf("a refused update changed the workspace: %+v", ws)
	}
	// Bad input: clear errors, nothing changed.
	for _, bad := range []UpdateWorkspaceOptions{
		{Name: "bad name"}, {Name: "-x"}, {Name: "0123456789ab"}, // id-shaped
		{Labels: map[string]string{"bad key": "v"}}, {Labels: map[string]string{"k": "line\nbreak"}},
		{Labels: map[string]string{"k": "v"}, ClearLabels: []string{"k"}}, {},
	} {
		if _, err := c.UpdateWorkspace(ctx, "api", bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("update %+v: %v", bad, err)
		}
	}
	if _, err := ParseLabels([]string{"team"}); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "'='") {
		t.Fatalf("label without '=': %v", err)
	}
	if ws, _ := c.StatusWorkspace(ctx, api); ws.Name != "api" || len(ws.Labels) != 2 {
		t.Fatalf("refused updates changed the workspace: %+v", ws)
	}

	// Rename, set and clear labels; the old name is free again.
	ws, err = c.UpdateWorkspace(ctx, "api", UpdateWorkspaceOptions{Name: "api2", Labels: map[string]string{"stage": "prod"}, ClearLabels: []string{"team"}})
	if err != nil || ws.WorkspaceID != api || ws.Name != "api2" || len(ws.Labels) != 1 || ws.Labels["stage"] != "prod" {
		t.Fatalf("update: %+v %v", ws, err)
	}
	if _, err := c.StatusWorkspace(ctx, "api"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("old name still resolves: %v", err)
	}
	if _, err := c.UpdateWorkspace(ctx, web, UpdateWorkspaceOptions{Name: "api"}); err != nil {
		t.Fatalf("freed name: %v", err)
	}
	// Renaming a workspace to its own name is fine.
	if _, err := c.UpdateWorkspace(ctx, "api", UpdateWorkspaceOptions{Name: "api"}); err != nil {
		t.Fatalf("own name: %v", err)
	}
}

func TestListWorkspacesOrderAndFilter(t *testing.T) {
	c := newTestClient(t)
	ctx := context.Background()
	a := recordWorkspace(t, c, "a", map[string]string{"team": "infra"})
	b := recordWorkspace(t, c, "b", map[string]string{"team": "infra", "stage": "dev"})
	d := recordWorkspace(t, c, "d", nil)
	// a was active most recently, then d, then b.
	for i, id := range []string{b, d, a} {
		dir, _, _ := c.wsDir(id)
		when := time.Now().Add(time.Duration(i+1) * time.Minute)
		touchActivity(dir)
		if err := os.Chtimes(dir.Path(activityFile), when, when); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(list []Workspace) (out []string) {
		for _, ws := range list {
			out = append(out, ws.WorkspaceID)
		}
		return out
	}
	list, err := c.ListWorkspaces(ctx, nil)
	if err != nil || strings.Join(ids(list), ",") != strings.Join([]string{a, d, b}, ",") {
		t.Fatalf("order: %v %v (want a, d, b)", ids(list), err)
	}
	list, _ = c.ListWorkspaces(ctx, &ListWorkspacesOptions{Labels: map[string]string{"team": "infra"}})
	if strings.Join(ids(list), ",") != a+","+b {
		t.Fatalf("label filter: %v", ids(list))
	}
	list, _ = c.ListWorkspaces(ctx, &ListWorkspacesOptions{Labels: map[string]string{"team": "infra", "stage": "dev"}})
	if strings.Join(ids(list), ",") != b {
		t.Fatalf("two labels: %v", ids(list))
	}
}

// TestWorkspaceNameRace: many creates racing for one name (in goroutines
// here; the lock is an flock, so processes race the same way): exactly
// one wins, the rest get already_exists.
func TestWorkspaceNameRace(t *testing.T) {
	c := newTestClient(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, taken := 0, 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := c.claimName(ctx, "same", nil)
			if err != nil {
				if !errors.Is(err, errdefs.ErrAlreadyExists) {
					t.Error(err)
				}
				mu.Lock()
				taken++
				mu.Unlock()
				return
			}
			rec := instance.Record{ID: vmdir.NewID(), Kind: instance.KindWorkspace, Environment: DefaultEnvironment, CreatedAt: time.Now().UTC()}
			_, _, err = c.lc.Create(ctx, rec, func(_ vmdir.Dir, r *instance.Record) error {
				setMeta(r, workspaceMeta{Name: "same"})
				return nil
			})
			release()
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			wins++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if wins != 1 || taken != 7 {
		t.Fatalf("wins %d, taken %d", wins, taken)
	}
}
