package cli

import (
	"context"
	"os"

	"github.com/pyro-mcp/pyro/internal/project"
)

// serveProject decides the project of `mcp serve`: the --project-path
// checkout when given ("" turns it off), else the git checkout the server
// is started in, if any. A server started outside any checkout has none.
func serveProject(ctx context.Context, given bool, dir string) (string, error) {
	if given {
		if dir == "" {
			return "", nil
		}
		return project.Root(ctx, dir)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", nil
	}
	root, err := project.Root(ctx, wd)
	if err != nil {
		return "", nil // not in a checkout: workspaces start empty
	}
	return root, nil
}
