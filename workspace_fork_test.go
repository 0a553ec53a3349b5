package pyro

import (
	"errors"
	"fmt"
	"testing"
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
