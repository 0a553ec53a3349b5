package pyro

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/lifecycle"
)

// What the forks inherited comes back whole for every fork, or as an
// error with no entries: a failed answer leaves no zero-valued fork in
// the list.
func TestCollectForksWholeOrError(t *testing.T) {
	entry := func(i int) ForkedWorkspace {
		return ForkedWorkspace{Workspace: Workspace{WorkspaceID: fmt.Sprint("fork-", i)}, InheritedServices: []string{"web"}, InheritedShells: []string{}}
	}
	forks, err := collectForks(3, func(i int) (ForkedWorkspace, error) { return entry(i), nil })
	if err != nil || len(forks) != 3 {
		t.Fatalf("all answered: %d entries, %v", len(forks), err)
	}
	for i, f := range forks {
		if f.WorkspaceID != entry(i).WorkspaceID {
			t.Errorf("entry %d is %q", i, f.WorkspaceID)
		}
	}
	failed := errors.New("status of fork-1: record gone")
	forks, err = collectForks(3, func(i int) (ForkedWorkspace, error) {
		if i == 1 {
			return ForkedWorkspace{}, failed
		}
		return entry(i), nil
	})
	if !errors.Is(err, failed) || forks != nil {
		t.Fatalf("one failed: %d entries %+v, %v", len(forks), forks, err)
	}
}

// A fork's entry is built from what its guest told in its identity call
// (the supervisor's status carries it): no call to its agent, so nothing
// more for a freshly restored TCG guest to translate. Here there is no
// agent at all: an entry asked of one would list nothing.
func TestForkEntryFromIdentity(t *testing.T) {
	c := newTestClient(t)
	id := recordWorkspace(t, c, "", nil)
	dir, rec, err := c.wsDir(id)
	if err != nil {
		t.Fatal(err)
	}
	st := lifecycle.Status{State: instance.Running, Start: "fork", Inherited: &agentapi.Inherited{
		Services: []agentapi.ServiceStatus{{Name: "web", State: agentapi.ServiceRunning}, {Name: "old", State: agentapi.ServiceExited}},
		Shells:   []agentapi.ShellInfo{{ShellID: "sh1"}},
		Jobs:     []agentapi.JobInfo{{JobID: "j1"}},
	}}
	fw, err := c.forkInherited(context.Background(), dir, rec, st)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fw.InheritedServices, []string{"web", "old"}) || !slices.Equal(fw.InheritedShells, []string{"sh1"}) {
		t.Fatalf("inherited %v %v", fw.InheritedServices, fw.InheritedShells)
	}
	if fw.WorkspaceID != id || fw.State != instance.Running || fw.Start != "fork" || fw.ServiceCount != 2 || fw.RunningServiceCount != 1 || len(fw.Jobs) != 1 || fw.Jobs[0].JobID != "j1" {
		t.Fatalf("status %+v", fw.Workspace)
	}
}
