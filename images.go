package pyro

import (
	"context"
	"fmt"
	"strings"

	"github.com/pyro-mcp/pyro/internal/catalog"
	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/oci"
)

// EnvironmentImage describes the OCI image an environment was converted
// from, and the config its commands run with.
type EnvironmentImage struct {
	Reference  string   `json:"reference"`
	Digest     string   `json:"digest"` // image manifest digest
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Layers     int      `json:"layers"`
	Skipped    int      `json:"skipped_entries"`
}

func imageFrom(i *envstore.ImageInfo) *EnvironmentImage {
	if i == nil {
		return nil
	}
	return &EnvironmentImage{Reference: i.Reference, Digest: i.Digest, Env: i.Env, WorkingDir: i.WorkingDir,
		User: i.User, Layers: i.Layers, Skipped: i.Skipped}
}

// IsImageReference reports whether an environment name is an OCI image
// reference rather than a catalog name. The rule: a reference starts with
// "oci-archive:" or "docker-archive:", or contains "/" or "@"
// ("docker.io/library/python:3.12-slim", "localhost:5000/img@sha256:...");
// catalog names ("debian:12") never do.
func IsImageReference(name string) bool { return envstore.IsImage(name) }

// validateEnvironmentName checks a catalog name or an image reference
// without touching the store or the network.
func validateEnvironmentName(name string) error {
	if envstore.IsImage(name) {
		_, err := oci.Parse(name)
		return err
	}
	_, err := catalog.Lookup(name)
	if err != nil && !strings.Contains(name, "/") {
		return errdefs.Wrap(errdefs.Category(err), err, "catalog names are listed by `pyro env list`; an image from Docker Hub is docker.io/library/NAME:TAG", "environment %q", name)
	}
	return err
}

// ensureEnvironment makes the environment a new VM boots available and
// returns the digest to record: an image is pulled and converted unless
// cached (unless the client was told not to pull), a catalog environment
// must be installed.
func (c *Client) ensureEnvironment(ctx context.Context, name string) (string, error) {
	if !envstore.IsImage(name) {
		inst, err := c.envs.Get(name)
		return inst.Manifest.Digest, err
	}
	d, err := c.envs.ImageDigest(name)
	if err != nil {
		return "", err
	}
	if inst, err := c.envs.GetImage(name, d); err == nil {
		return inst.Manifest.Image.Digest, nil
	}
	switch {
	case c.imagePulls == ImagePullsNone:
		return "", errdefs.New(errdefs.ErrFailedPrecondition,
			fmt.Sprintf("run `pyro env pull %s` on the host first, or start the server with --allow-pull", name),
			"image %q is not pulled, and this server does not pull images on a client's request", name)
	case c.imagePulls == ImagePullsRegistryOnly && !isRegistryRef(name):
		return "", errdefs.New(errdefs.ErrFailedPrecondition,
			fmt.Sprintf("run `pyro env pull %s` on the host first", name),
			"image archive %q is not pulled, and this server does not read host archives on a client's request", name)
	}
	r, err := c.envs.PullImage(ctx, name, envstore.ImagePullOptions{})
	if err != nil {
		return "", err
	}
	return r.Installed.Manifest.Image.Digest, nil
}

// ImagePullPolicy says which uncached images creating a VM, workspace or
// run may pull. PullEnvironment is not affected: it is always explicit.
type ImagePullPolicy int

const (
	// ImagePullsAll pulls any reference (the default: the SDK and CLI act
	// with the user's own hand).
	ImagePullsAll ImagePullPolicy = iota
	// ImagePullsRegistryOnly pulls from registries but reads no host
	// archive (oci-archive:, docker-archive:) that is not cached.
	ImagePullsRegistryOnly
	// ImagePullsNone pulls nothing: only cached images and catalog
	// environments boot.
	ImagePullsNone
)

// SetImagePulls limits what creating a VM, workspace or run may pull. The
// MCP server sets ImagePullsNone (a model chooses the environment, and a
// pull makes the host fetch from a network registry) unless started with
// --allow-pull, which sets ImagePullsRegistryOnly.
func (c *Client) SetImagePulls(p ImagePullPolicy) { c.imagePulls = p }

func isRegistryRef(name string) bool {
	src, err := oci.Parse(name)
	return err == nil && src.Kind == oci.KindRegistry
}

func imageEnvironment(st envstore.ImageStatus, ref string) Environment {
	e := Environment{Name: ref, Kind: "image", Digest: st.Digest, Installed: st.Manifest != nil && st.Damaged == "",
		Damaged: st.Damaged, Path: st.Dir, SizeBytes: st.SizeBytes, Manifest: manifestFrom(st.Manifest), Packages: []string{}}
	if st.Manifest != nil {
		e.Version, e.Description = st.Manifest.Version, st.Manifest.Description
	}
	return e
}

// listImages is the image part of ListEnvironments: one entry per cached
// image, named by its first reference.
func (c *Client) listImages() ([]Environment, error) {
	sts, err := c.envs.ListImages()
	if err != nil {
		return nil, err
	}
	var out []Environment
	for _, st := range sts {
		ref := st.Digest
		if len(st.References) > 0 {
			ref = st.References[0]
		}
		e := imageEnvironment(st, ref)
		e.References = st.References
		out = append(out, e)
	}
	return out, nil
}

func (c *Client) inspectImage(ref string) (Environment, error) {
	st, err := c.envs.InspectImage(ref)
	if err != nil {
		return Environment{}, err
	}
	e := imageEnvironment(st, ref)
	e.References = st.References
	return e, nil
}

func (c *Client) pullImage(ctx context.Context, ref string, opts PullOptions) (PullResult, error) {
	r, err := c.envs.PullImage(ctx, ref, envstore.ImagePullOptions{Force: opts.Force, Progress: progressTo(opts.Progress)})
	if err != nil {
		return PullResult{}, err
	}
	env, err := c.inspectImage(ref)
	if err != nil {
		return PullResult{}, err
	}
	return PullResult{Environment: env, AlreadyInstalled: r.AlreadyInstalled, Rebuilt: r.Rebuilt, DurationMS: r.DurationMS}, nil
}

// imagesInUse is the set of image digests some VM or workspace record
// names: PruneEnvironments keeps those.
func (c *Client) imagesInUse() (map[string]bool, error) {
	used := map[string]bool{}
	for _, kind := range []string{instance.KindVM, instance.KindWorkspace} {
		_, recs, err := c.lc.List(kind)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if envstore.IsImage(r.Environment) {
				d := r.EnvironmentDigest
				if d == "" {
					d, _ = c.envs.ImageDigest(r.Environment)
				}
				used[d] = true
			}
		}
	}
	return used, nil
}

func (c *Client) pruneImages(ctx context.Context, into *PruneResult) error {
	used, err := c.imagesInUse()
	if err != nil {
		return err
	}
	r, err := c.envs.PruneImages(ctx, func(d string) bool { return used[d] })
	p := pruneFrom(r)
	into.Removed = append(into.Removed, p.Removed...)
	into.FreedBytes += p.FreedBytes
	return err
}

// PushOptions tune PushEnvironment.
type PushOptions struct {
	// Progress, when set, receives progress events.
	Progress func(PullProgress)
}

// PushResult says what PushEnvironment published.
type PushResult struct {
	Reference         string `json:"reference"`
	Digest            string `json:"digest"`             // artifact manifest digest
	EnvironmentDigest string `json:"environment_digest"` // the environment's own digest
	DurationMS        int64  `json:"duration_ms"`
}

// PushEnvironment publishes an installed catalog environment (kernel,
// root filesystem, manifest) to a registry as an OCI artifact, so that
// other hosts `pyro env pull` it with $PYRO_REGISTRY (or
// PullOptions.Registry) instead of building it. ref is where it goes, by
// convention <registry>/<name>: localhost:5000/pyro/debian:12. Credentials
// come from ~/.docker/config.json and its credential helpers.
func (c *Client) PushEnvironment(ctx context.Context, name, ref string, opts PushOptions) (PushResult, error) {
	r, err := c.envs.Push(ctx, name, ref, oci.Options{}, progressTo(opts.Progress))
	return PushResult{Reference: r.Reference, Digest: r.Digest, EnvironmentDigest: r.EnvironmentDigest, DurationMS: r.DurationMS}, err
}
