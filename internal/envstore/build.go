package envstore

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// localBuild builds an environment from Debian packages on this host: the
// kernel from the cloud kernel package (cached across environments), the root
// with mmdebstrap or debootstrap, the image with mke2fs -d.
func (s *Store) localBuild(ctx context.Context, req buildRequest) (buildResult, error) {
	var res buildResult
	if os.Geteuid() != 0 {
		return res, errdefs.New(errdefs.ErrFailedPrecondition, "run `pyro env pull` as root",
			"building environment %q locally needs root (the bootstrap tools create device nodes and set owners)", req.Entry.Name)
	}
	tool, toolPath, err := bootstrapTool()
	if err != nil {
		return res, err
	}
	for _, t := range []string{"mke2fs", "lz4", "dpkg-deb", "apt-get", "apt-cache"} {
		if _, err := lookTool(t); err != nil {
			return res, errdefs.New(errdefs.ErrFailedPrecondition, "install e2fsprogs, lz4 and apt",
				"building an environment needs %q, which is not installed", t)
		}
	}
	mirror := resolveMirror(req.Mirror, "/etc/apt")
	req.Emit(Event{Phase: "resolve", Message: fmt.Sprintf("%s %s with %s from %s", req.Entry.Name, req.Entry.Version, tool, mirror)})
	res.Tool, res.Mirror = tool, mirror

	kdir, kc, err := s.ensureKernel(ctx, req.Emit)
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(filepath.Join(req.Dir, ModulesDir), 0o755); err != nil {
		return res, err
	}
	for _, rel := range append([]string{KernelFile}, kc.Modules...) {
		if err := linkOrCopy(filepath.Join(kdir, filepath.FromSlash(rel)), filepath.Join(req.Dir, filepath.FromSlash(rel))); err != nil {
			return res, fmt.Errorf("copy kernel files: %w", err)
		}
	}
	res.Kernel, res.Modules, res.BuiltinModules = kc.Kernel, kc.Modules, kc.BuiltinModules

	if err := s.buildRootfs(ctx, req.Entry, tool, toolPath, mirror, req.Dir, filepath.Join(req.Dir, RootfsFile), req.Emit); err != nil {
		return res, err
	}
	return res, nil
}

// linkOrCopy hard-links src to dst, copying when a link is impossible (other
// filesystem). Installs are verified by digest, and a damaged cache entry is
// re-extracted, so sharing inodes is safe.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
