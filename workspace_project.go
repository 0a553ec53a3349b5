package pyro

import (
	"context"
	"io"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/project"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Seed origins (WorkspaceSeed.OriginKind): where a workspace's create-time
// content came from.
const (
	OriginProjectPath    = "project_path"     // the git-tracked files of a checkout
	OriginManualSeedPath = "manual_seed_path" // a directory or archive given as seed path
	OriginEmpty          = "empty"
)

// originKind reads a stored seed's origin; records older than origins
// have none and get the one their source implies.
func originKind(s workspace.Seed) string {
	switch {
	case s.OriginKind != "":
		return s.OriginKind
	case s.SourcePath != "":
		return OriginManualSeedPath
	}
	return OriginEmpty
}

// projectSeed opens the git-tracked files of the checkout containing
// opts.ProjectPath as a tar stream and records the origin in seed.
func projectSeed(ctx context.Context, opts CreateWorkspaceOptions, seed *workspace.Seed) (io.ReadCloser, error) {
	if opts.SeedPath != "" {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "give a seed path or a project path, not both", "two seeds for one workspace")
	}
	root, err := project.Root(ctx, opts.ProjectPath)
	if err != nil {
		return nil, err
	}
	files, err := project.Files(ctx, root)
	if err != nil {
		return nil, err
	}
	r, _, err := project.Tar(root, files)
	if err != nil {
		return nil, err
	}
	seed.Mode, seed.SourcePath = "directory", root
	seed.OriginKind, seed.OriginRef = OriginProjectPath, root
	return r, nil
}
