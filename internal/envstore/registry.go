package envstore

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/oci"
)

// RegistryEnv names the registry catalog environments are fetched from
// before building locally, e.g. "registry.example.com/pyro" (then
// debian:12 is registry.example.com/pyro/debian:12).
const RegistryEnv = "PYRO_REGISTRY"

// registryRef is where name lives in registry.
func registryRef(registry, name string) string {
	return strings.TrimSuffix(registry, "/") + "/" + name
}

// fetchOrBuild fills req.Dir from the configured registry, or, when there
// is none or it fails, with a local build. A registry failure is a one-line
// note, not an error: the local build does not need it.
func (s *Store) fetchOrBuild(ctx context.Context, req buildRequest, opts PullOptions) (buildResult, error) {
	registry := opts.Registry
	if registry == "" {
		registry = os.Getenv(RegistryEnv)
	}
	if registry != "" {
		ref := registryRef(registry, req.Entry.Name)
		br, err := s.fetchFromRegistry(ctx, req, ref, opts.OCI)
		if err == nil {
			return br, nil
		}
		if ctx.Err() != nil {
			return br, err
		}
		req.Emit(Event{Phase: "note", Message: fmt.Sprintf("registry %s: %s; building locally", ref, errdefs.Message(err))})
		s.log.Info("registry fetch failed, building locally", "ref", ref, "err", err)
		if err := emptyDir(req.Dir); err != nil {
			return buildResult{}, err
		}
	}
	return s.build(ctx, req)
}

func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := removeTree(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// fetchFromRegistry pulls the artifact at ref into req.Dir and checks that
// it is the catalog's current version of the environment. Pull then checks
// every file against the pushed manifest's digest.
func (s *Store) fetchFromRegistry(ctx context.Context, req buildRequest, ref string, o oci.Options) (buildResult, error) {
	req.Emit(Event{Phase: "resolve", Message: "fetching from " + ref})
	if o.TempDir == "" {
		o.TempDir = s.root
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = maxImageBytes()
	}
	got, err := oci.PullEnvironment(ctx, ref, req.Dir, o, func(msg string, done, total int64) {
		req.Emit(Event{Phase: "download", Message: msg, Done: done, Total: total})
	})
	if err != nil {
		return buildResult{}, err
	}
	var m Manifest
	if err := json.Unmarshal(got.Manifest, &m); err != nil {
		return buildResult{}, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "artifact %s: bad environment manifest", ref)
	}
	if m.Name != req.Entry.Name || m.Version != req.Entry.Version {
		return buildResult{}, errdefs.New(errdefs.ErrFailedPrecondition, "push the current version with `pyro env push`",
			"%s holds %q version %q, want version %q", ref, m.Name, m.Version, req.Entry.Version)
	}
	if len(got.Files) != len(m.Files) {
		return buildResult{}, errdefs.New(errdefs.ErrInvalidArgument, "", "artifact %s has %d files, its manifest lists %d", ref, len(got.Files), len(m.Files))
	}
	for _, f := range got.Files {
		if _, ok := m.Files[f]; !ok {
			return buildResult{}, errdefs.New(errdefs.ErrInvalidArgument, "", "artifact %s has file %s its manifest does not list", ref, f)
		}
	}
	if m.Digest != computeDigest(m.Files) {
		return buildResult{}, errdefs.New(errdefs.ErrInvalidArgument, "", "artifact %s: its manifest's digest does not match its file list", ref)
	}
	return buildResult{
		Kernel: m.Kernel, Modules: m.Modules, BuiltinModules: m.BuiltinModules, Tool: m.BuildTool, Mirror: m.Mirror,
		Source: "registry " + ref + "@" + got.Digest, BuiltAt: m.BuiltAt, WantDigest: m.Digest,
	}, nil
}

// PushResult says what Push published.
type PushResult struct {
	Reference         string `json:"reference"`
	Digest            string `json:"digest"`             // artifact manifest digest
	EnvironmentDigest string `json:"environment_digest"` // the environment's own digest (manifest.json "digest")
	DurationMS        int64  `json:"duration_ms"`
}

// Push publishes an installed, intact catalog environment to ref as an OCI
// artifact (see oci.PushEnvironment). The install is fully verified first,
// so a damaged copy is never published.
func (s *Store) Push(ctx context.Context, name, ref string, o oci.Options, progress func(Event)) (PushResult, error) {
	start := time.Now()
	if IsImage(name) {
		return PushResult{}, errdefs.New(errdefs.ErrInvalidArgument, "push it with the tool that built it (docker push, crane, skopeo)", "%q is an image, not a catalog environment", name)
	}
	e, err := lookup(name)
	if err != nil {
		return PushResult{}, err
	}
	if progress == nil {
		progress = func(Event) {}
	}
	progress(Event{Phase: "verify", Message: "checking " + name})
	inst, reason, err := s.check(e, true)
	if err != nil {
		return PushResult{}, err
	}
	if reason != "" {
		return PushResult{}, errdefs.New(errdefs.ErrFailedPrecondition, rebuildHint(name), "environment %q is damaged: %s", name, reason)
	}
	if o.TempDir == "" {
		o.TempDir = s.root
	}
	if err := os.MkdirAll(o.TempDir, 0o755); err != nil {
		return PushResult{}, err
	}
	files := sortedKeys(inst.Manifest.Files)
	d, err := oci.PushEnvironment(ctx, ref, inst.Dir, files, o.TempDir, o, func(msg string, done, total int64) {
		progress(Event{Phase: "push", Message: msg, Done: done, Total: total})
	})
	if err != nil {
		return PushResult{}, err
	}
	return PushResult{Reference: ref, Digest: d, EnvironmentDigest: inst.Manifest.Digest, DurationMS: time.Since(start).Milliseconds()}, nil
}
