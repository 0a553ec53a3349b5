package pyro

import (
	"context"

	"github.com/pyro-mcp/pyro/internal/envstore"
)

// Environment is one catalog environment and its install state.
type Environment struct {
	Name        string               `json:"name"`
	Version     string               `json:"version"`
	Description string               `json:"description"`
	Packages    []string             `json:"packages"`
	Default     bool                 `json:"default"`
	Installed   bool                 `json:"installed"`
	Damaged     string               `json:"damaged,omitempty"`
	Path        string               `json:"path,omitempty"`
	SizeBytes   int64                `json:"size_bytes"`
	Manifest    *EnvironmentManifest `json:"manifest,omitempty"`
	// Kind is "catalog" or "image" (converted from an OCI image; Name is
	// then its reference and Digest its manifest digest).
	Kind       string   `json:"kind"`
	Digest     string   `json:"digest,omitempty"`
	References []string `json:"references,omitempty"`
	// GoldenSnapshots are its memory snapshots (InspectEnvironment only).
	GoldenSnapshots []GoldenSnapshot `json:"golden_snapshots,omitempty"`
}

func environmentFrom(st envstore.Status) Environment {
	return Environment{
		Name: st.Entry.Name, Version: st.Entry.Version, Description: st.Entry.Description,
		Packages: st.Entry.Packages, Default: st.Entry.Default,
		Installed: st.Installed, Damaged: st.Damaged, Path: st.Dir, SizeBytes: st.SizeBytes,
		Manifest: manifestFrom(st.Manifest), Kind: "catalog",
	}
}

// ListEnvironments returns every catalog environment with its install state.
func (c *Client) ListEnvironments(ctx context.Context) ([]Environment, error) {
	sts, err := c.envs.List()
	if err != nil {
		return nil, err
	}
	out := make([]Environment, 0, len(sts))
	for _, st := range sts {
		out = append(out, environmentFrom(st))
	}
	imgs, err := c.listImages()
	if err != nil {
		return nil, err
	}
	return append(out, imgs...), nil
}

// InspectEnvironment returns one environment's manifest, paths and sizes.
// An unknown name is ErrNotFound.
func (c *Client) InspectEnvironment(ctx context.Context, name string) (Environment, error) {
	if IsImageReference(name) {
		return c.inspectImage(name)
	}
	st, err := c.envs.Inspect(name)
	if err != nil {
		return Environment{}, err
	}
	env := environmentFrom(st)
	if st.Installed {
		env.GoldenSnapshots, _ = c.GoldenSnapshots(name)
	}
	return env, nil
}

// PullOptions tune PullEnvironment.
type PullOptions struct {
	// Mirror is the Debian mirror for local builds. Default:
	// $PYRO_DEBIAN_MIRROR, else the host's apt sources.
	Mirror string
	// Force rebuilds even an intact install.
	Force bool
	// Progress, when set, receives progress events.
	Progress func(PullProgress)
	// Registry is tried before a local build of a catalog environment
	// (default $PYRO_REGISTRY): <Registry>/<name>, pushed by
	// PushEnvironment, digest-checked. When it fails the pull builds
	// locally and reports a "note" progress event.
	Registry string
}

// PullResult says what a pull did.
type PullResult struct {
	Environment      Environment `json:"environment"`
	AlreadyInstalled bool        `json:"already_installed"`
	Rebuilt          bool        `json:"rebuilt"`
	DurationMS       int64       `json:"duration_ms"`
	// Warm is the memory snapshot built with --warm (CLI).
	Warm *PrepareResult `json:"warm,omitempty"`
}

// PullEnvironment installs an environment: a no-op when an intact copy is
// installed, otherwise a (re)build from Debian packages. It is atomic: a
// cancelled pull leaves nothing behind.
func (c *Client) PullEnvironment(ctx context.Context, name string, opts PullOptions) (PullResult, error) {
	if IsImageReference(name) {
		return c.pullImage(ctx, name, opts)
	}
	r, err := c.envs.Pull(ctx, name, envstore.PullOptions{Mirror: opts.Mirror, Force: opts.Force, Progress: progressTo(opts.Progress), Registry: opts.Registry})
	if err != nil {
		return PullResult{}, err
	}
	env, err := c.InspectEnvironment(ctx, name)
	if err != nil {
		return PullResult{}, err
	}
	return PullResult{Environment: env, AlreadyInstalled: r.AlreadyInstalled, Rebuilt: r.Rebuilt, DurationMS: r.DurationMS}, nil
}

// PruneEnvironments removes partial builds, superseded versions, names the
// catalog no longer has, unused kernel caches and every golden memory
// snapshot (rebuilt on the next start that wants one). Installed current
// versions of catalog environments stay.
func (c *Client) PruneEnvironments(ctx context.Context) (PruneResult, error) {
	r, err := c.envs.Prune(ctx)
	out := pruneFrom(r)
	if err != nil {
		return out, err
	}
	if err := c.pruneImages(ctx, &out); err != nil {
		return out, err
	}
	// Memory snapshots too (warm.go): rebuilt on the next start.
	return out, c.pruneSnapshots(&out)
}
