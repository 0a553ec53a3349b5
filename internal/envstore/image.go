package envstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/oci"
)

// Environments converted from OCI images live apart from the catalog:
//
//	<root>/images/<sha256 hex of the image manifest>/   manifest.json vmlinux rootfs.ext4 modules/
//	<root>/images/refs.json                              reference -> manifest digest
//
// An image is cached by its manifest digest, so two tags of one image share
// an install. Installs and refs.json are written under the store lock;
// readers take none (renames are atomic).
const (
	imagesDir = "images"
	refsFile  = "refs.json"
)

// ImageInfo is what an image environment's manifest records of its image.
type ImageInfo struct {
	Reference  string   `json:"reference"` // canonical, as first pulled
	Digest     string   `json:"digest"`    // manifest digest
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Layers     int      `json:"layers"`
	Skipped    int      `json:"skipped_entries"` // device nodes, fifos, sockets not copied
}

// IsImage reports whether name is an image reference rather than a catalog
// name (see oci.IsReference for the rule).
func IsImage(name string) bool { return oci.IsReference(name) }

var hexDigestRE = lazyRegexp(`^sha256:[0-9a-f]{64}$`)

func (s *Store) imagesRoot() string { return filepath.Join(s.root, imagesDir) }

func (s *Store) imageDir(digest string) string {
	return filepath.Join(s.imagesRoot(), strings.TrimPrefix(digest, "sha256:"))
}

// maxImageBytes is $PYRO_MAX_IMAGE_BYTES, else oci.DefaultMaxBytes.
func maxImageBytes() int64 {
	if v, err := strconv.ParseInt(os.Getenv("PYRO_MAX_IMAGE_BYTES"), 10, 64); err == nil && v > 0 {
		return v
	}
	return oci.DefaultMaxBytes
}

func readRefs(dir string) map[string]string {
	m := map[string]string{}
	if b, err := os.ReadFile(filepath.Join(dir, refsFile)); err == nil {
		_ = json.Unmarshal(b, &m)
	}
	return m
}

func writeRefs(dir string, m map[string]string) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dir, refsFile), append(b, '\n'), 0o644)
}

// ImageDigest returns the manifest digest ref is cached under, without the
// network: the digest a reference pins, else the one its last pull
// resolved. "" when ref was never pulled.
func (s *Store) ImageDigest(ref string) (string, error) {
	src, err := oci.Parse(ref)
	if err != nil {
		return "", err
	}
	if d := src.Digest(); d != "" {
		return d, nil
	}
	return readRefs(s.imagesRoot())[src.String()], nil
}

// GetImage returns the installed image environment ref names, after the
// same fast check as Get. digest, when set, pins the install (a workspace
// boots the image it was created from even if the tag moved since).
func (s *Store) GetImage(ref, digest string) (Installed, error) {
	if digest == "" {
		d, err := s.ImageDigest(ref)
		if err != nil {
			return Installed{}, err
		}
		digest = d
	}
	hint := fmt.Sprintf("run `pyro env pull %s`", ref)
	if !hexDigestRE().MatchString(digest) {
		return Installed{}, errdefs.New(errdefs.ErrNotFound, hint, "image %q is not pulled", ref)
	}
	inst, reason, err := s.checkImage(digest, false)
	if err != nil {
		return Installed{}, errdefs.Wrap(errdefs.ErrNotFound, err, hint, "image %q is not pulled", ref)
	}
	if reason != "" {
		return Installed{}, errdefs.New(errdefs.ErrFailedPrecondition, hint+" to convert it again", "image environment %q is damaged: %s", ref, reason)
	}
	return inst, nil
}

func (s *Store) checkImage(digest string, full bool) (Installed, string, error) {
	dir := s.imageDir(digest)
	if _, err := os.Stat(dir); err != nil {
		return Installed{}, "", err
	}
	inst := Installed{Dir: dir}
	m, err := readManifest(dir)
	if err != nil {
		return inst, "partial install: " + err.Error(), nil
	}
	inst.Manifest = m
	if m.Image == nil || m.Image.Digest != digest {
		return inst, "manifest does not name this image", nil
	}
	return inst, verify(dir, m, m.Name, m.Version, full), nil
}

// ImagePullOptions tune PullImage.
type ImagePullOptions struct {
	Force    bool        // convert again even when the digest is installed
	Progress func(Event) // may be nil
	// OCI is registry access; MaxBytes, MaxEntries and MaxDuration default
	// to $PYRO_MAX_IMAGE_BYTES, $PYRO_MAX_IMAGE_ENTRIES and
	// $PYRO_MAX_IMAGE_SECONDS.
	OCI oci.Options
}

// PullImage resolves ref (asking the registry which digest a tag names),
// and unless that digest is installed and intact, downloads and converts
// it: layers applied into a staging tree, pyro's files added, an ext4
// image made with mke2fs -d, pyro's kernel added, a manifest written last,
// and the whole renamed into place. Any failure or cancellation leaves no
// entry behind.
func (s *Store) PullImage(ctx context.Context, ref string, opts ImagePullOptions) (PullResult, error) {
	start := time.Now()
	var res PullResult
	src, err := oci.Parse(ref)
	if err != nil {
		return res, err
	}
	emit := func(ev Event) {
		s.log.Debug("image pull", "ref", ref, "phase", ev.Phase, "msg", ev.Message, "done", ev.Done, "total", ev.Total)
		if opts.Progress != nil {
			opts.Progress(ev)
		}
	}
	if err := os.MkdirAll(s.imagesRoot(), 0o755); err != nil {
		return res, fmt.Errorf("create image store: %w", err)
	}
	if opts.OCI.MaxBytes <= 0 {
		opts.OCI.MaxBytes = maxImageBytes()
	}
	if v, err := strconv.Atoi(os.Getenv("PYRO_MAX_IMAGE_ENTRIES")); err == nil && v > 0 && opts.OCI.MaxEntries <= 0 {
		opts.OCI.MaxEntries = v
	}
	if v, err := strconv.Atoi(os.Getenv("PYRO_MAX_IMAGE_SECONDS")); err == nil && v > 0 && opts.OCI.MaxDuration <= 0 {
		opts.OCI.MaxDuration = time.Duration(v) * time.Second
	}
	if opts.OCI.TempDir == "" {
		opts.OCI.TempDir = s.root
	}
	emit(Event{Phase: "resolve", Message: src.String()})
	im, err := oci.Open(ctx, src, opts.OCI)
	if err != nil {
		return res, err
	}
	defer im.Close()

	fl, err := s.lock(ctx, emit)
	if err != nil {
		return res, err
	}
	defer fl.Unlock()
	remember := func() error {
		refs := readRefs(s.imagesRoot())
		refs[src.String()] = im.Digest
		return writeRefs(s.imagesRoot(), refs)
	}
	if !opts.Force {
		if inst, reason, err := s.checkImage(im.Digest, true); err == nil && reason == "" {
			res.Installed, res.AlreadyInstalled = inst, true
			res.DurationMS = time.Since(start).Milliseconds()
			return res, remember()
		} else if err == nil {
			res.Rebuilt = true
		}
	}
	if os.Geteuid() != 0 {
		return res, errdefs.New(errdefs.ErrFailedPrecondition, "run `pyro env pull "+ref+"` as root",
			"converting image %s needs root (its files keep their owners)", src)
	}
	if _, err := lookTool("mke2fs"); err != nil {
		return res, errdefs.New(errdefs.ErrFailedPrecondition, "install e2fsprogs", "converting an image needs mke2fs, which is not installed")
	}

	tmp, err := os.MkdirTemp(s.root, tmpPrefix)
	if err != nil {
		return res, fmt.Errorf("create build directory: %w", err)
	}
	installed := false
	defer func() {
		if !installed {
			s.removeBuild(tmp, "partial image build")
		}
	}()
	// tmp stays 0700 (MkdirTemp) while it holds the image's files: they
	// keep the image's owners and setuid bits, which other local users
	// must never reach on the host. It opens up only once they are gone.
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return res, err
	}
	emit(Event{Phase: "layers", Message: fmt.Sprintf("%s (%d MiB)", src, im.CompressedBytes()>>20), Total: im.CompressedBytes()})
	ar, err := im.Apply(ctx, root, func(done, total int64) {
		emit(Event{Phase: "layers", Message: src.String(), Done: done, Total: total})
	})
	if err != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("pull image %s: %w", src, ctx.Err())
		}
		return res, err
	}
	if ar.SkippedCount > 0 {
		emit(Event{Phase: "note", Message: fmt.Sprintf("skipped %d device nodes, fifos or sockets (the guest mounts its own /dev)", ar.SkippedCount)})
	}
	cfg := agentapi.ImageConfig{Reference: src.String(), Digest: im.Digest, Env: im.Config.Config.Env,
		WorkingDir: im.Config.Config.WorkingDir, User: im.Config.Config.User}
	if err := customizeImageRoot(root, cfg); err != nil {
		return res, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "prepare image %s", src)
	}
	if err := makeImage(ctx, root, filepath.Join(tmp, RootfsFile), emit); err != nil {
		return res, err
	}
	emit(Event{Phase: "image", Message: "removing the staging tree"})
	if err := removeTree(root); err != nil {
		return res, err
	}
	kdir, kc, err := s.kernelForImage(ctx, emit)
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(filepath.Join(tmp, ModulesDir), 0o755); err != nil {
		return res, err
	}
	for _, rel := range append([]string{KernelFile}, kc.Modules...) {
		if err := linkOrCopy(filepath.Join(kdir, filepath.FromSlash(rel)), filepath.Join(tmp, filepath.FromSlash(rel))); err != nil {
			return res, fmt.Errorf("copy kernel files: %w", err)
		}
	}
	emit(Event{Phase: "verify", Message: "computing digests"})
	files, err := hashTree(tmp, nil)
	if err != nil {
		return res, err
	}
	m := Manifest{
		Name: src.String(), Version: strings.TrimPrefix(im.Digest, "sha256:")[:12],
		Description: "OCI image " + src.String(), Packages: []string{},
		Kernel: kc.Kernel, Files: files, Modules: nonNil(kc.Modules), BuiltinModules: nonNil(kc.BuiltinModules),
		Source: "oci", BuildTool: "pyro", BuiltAt: time.Now().UTC().Truncate(time.Second),
		Digest: computeDigest(files),
		Image: &ImageInfo{Reference: src.String(), Digest: im.Digest, Env: cfg.Env, WorkingDir: cfg.WorkingDir, User: cfg.User,
			Layers: ar.Layers, Skipped: ar.SkippedCount},
	}
	for _, f := range files {
		m.TotalBytes += f.Size
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("pull image %s: %w", src, err)
	}
	if err := writeManifest(tmp, m); err != nil {
		return res, err
	}
	emit(Event{Phase: "install", Message: "installing " + src.String()})
	if err := os.Chmod(tmp, 0o755); err != nil {
		return res, err
	}
	dir := s.imageDir(im.Digest)
	if err := s.install(tmp, dir); err != nil {
		return res, fmt.Errorf("install image %s: %w", src, err)
	}
	installed = true
	res.Installed = Installed{Dir: dir, Manifest: m}
	res.DurationMS = time.Since(start).Milliseconds()
	return res, remember()
}

// imageKernel is the kernel image environments boot: the newest intact
// kernel already in the cache (fast check: files unchanged since they were
// last hashed), else the current cloud kernel, extracted as for the catalog.
// Asking apt first would cost seconds on every conversion for the same
// answer.
func (s *Store) imageKernel(ctx context.Context, emit func(Event)) (string, kernelCache, error) {
	ents, _ := os.ReadDir(s.kernelsDir())
	type cand struct {
		dir string
		kc  kernelCache
		mod time.Time
	}
	var cands []cand
	for _, d := range ents {
		p := filepath.Join(s.kernelsDir(), d.Name())
		if strings.HasPrefix(d.Name(), tmpPrefix) || !d.IsDir() {
			continue
		}
		c, err := readKernelCache(p)
		if err != nil || c.Kernel.Package == "" {
			continue
		}
		info, err := d.Info()
		if err != nil {
			continue
		}
		cands = append(cands, cand{p, c, info.ModTime()})
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].mod.After(cands[j].mod) })
	for _, c := range cands {
		if reason := checkFiles(c.dir, c.kc.Files, false); reason == "" {
			emit(Event{Phase: "kernel", Message: "using cached " + c.kc.Kernel.Package + " " + c.kc.Kernel.Version})
			return c.dir, c.kc, nil
		}
	}
	return s.ensureKernel(ctx, emit)
}

// customizeImageRoot adds what the guest needs to an image's tree. The tree
// is untrusted (anyone can push an image), so every write goes through an
// os.Root: a symlinked /etc can never make the host write outside it.
func customizeImageRoot(dir string, cfg agentapi.ImageConfig) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if st, err := root.Lstat("etc/resolv.conf"); err == nil && st.Mode().IsRegular() {
		if err := root.Remove("etc/resolv.conf"); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		path string
		mode fs.FileMode
	}{{"etc", 0o755}, {"etc/pyro", 0o755}, {"workspace", 0o755}, {"run", 0o755}, {"tmp", 0o777 | fs.ModeSticky},
		{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {"root", 0o700}} {
		st, err := root.Lstat(d.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := root.Mkdir(d.path, 0o755); err != nil {
				return err
			}
			if err := root.Chmod(d.path, d.mode); err != nil {
				return err
			}
		case err != nil:
			return err
		case !st.IsDir():
			return fmt.Errorf("/%s in the image is not a directory", d.path)
		}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	for _, f := range []struct {
		rel, content string
		replace      bool
	}{
		{"etc/hostname", "pyro\n", true},
		{"etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tpyro\n::1\tlocalhost ip6-localhost ip6-loopback\n", false},
		{strings.TrimPrefix(agentapi.ImageConfigPath, "/"), string(b) + "\n", true},
	} {
		if err := writeInImage(root, f.rel, f.content, f.replace); err != nil {
			return fmt.Errorf("write /%s: %w", f.rel, err)
		}
	}
	return nil
}

func writeInImage(root *os.Root, rel, content string, replace bool) error {
	if st, err := root.Lstat(rel); err == nil {
		if !replace {
			return nil
		}
		if st.IsDir() {
			return fmt.Errorf("/%s in the image is a directory", rel)
		}
		if err := root.Remove(rel); err != nil {
			return err
		}
	}
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Chown(0, 0); err != nil && os.Geteuid() == 0 {
		f.Close()
		return err
	}
	return f.Close()
}

// ImageStatus is what ListImages reports of one cached image.
type ImageStatus struct {
	Digest     string    `json:"digest"`
	References []string  `json:"references"` // refs.json names pointing at it
	Dir        string    `json:"dir"`
	Manifest   *Manifest `json:"manifest,omitempty"`
	Damaged    string    `json:"damaged,omitempty"`
	SizeBytes  int64     `json:"size_bytes"`
}

// ListImages reports every cached image environment.
func (s *Store) ListImages() ([]ImageStatus, error) {
	ents, err := os.ReadDir(s.imagesRoot())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read image store: %w", err)
	}
	byDigest := map[string][]string{}
	for ref, d := range readRefs(s.imagesRoot()) {
		byDigest[d] = append(byDigest[d], ref)
	}
	var out []ImageStatus
	for _, d := range ents {
		digest := "sha256:" + d.Name()
		if !d.IsDir() || !hexDigestRE().MatchString(digest) {
			continue
		}
		st := ImageStatus{Digest: digest, References: byDigest[digest], Dir: filepath.Join(s.imagesRoot(), d.Name())}
		sort.Strings(st.References)
		inst, reason, err := s.checkImage(digest, false)
		if err != nil {
			continue
		}
		st.Damaged = reason
		if inst.Manifest.Image != nil {
			m := inst.Manifest
			st.Manifest = &m
			if len(st.References) == 0 {
				st.References = []string{m.Image.Reference}
			}
		}
		st.SizeBytes, _ = diskUsage(st.Dir)
		out = append(out, st)
	}
	return out, nil
}

// InspectImage reports one cached image by reference.
func (s *Store) InspectImage(ref string) (ImageStatus, error) {
	digest, err := s.ImageDigest(ref)
	if err != nil {
		return ImageStatus{}, err
	}
	all, err := s.ListImages()
	if err != nil {
		return ImageStatus{}, err
	}
	for _, st := range all {
		if st.Digest == digest && digest != "" {
			return st, nil
		}
	}
	return ImageStatus{}, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("run `pyro env pull %s`", ref), "image %q is not pulled", ref)
}

// PruneImages removes cached images for which keep returns false (nil keeps
// every intact one), damaged and partial ones, and references to removed
// images. keep gets the manifest digest.
func (s *Store) PruneImages(ctx context.Context, keep func(digest string) bool) (PruneResult, error) {
	res := PruneResult{Removed: []PrunedItem{}}
	fl, err := s.lock(ctx, nil)
	if err != nil {
		return res, err
	}
	defer fl.Unlock()
	ents, err := os.ReadDir(s.imagesRoot())
	if errors.Is(err, fs.ErrNotExist) {
		return res, nil
	}
	if err != nil {
		return res, err
	}
	removed := map[string]bool{}
	for _, d := range ents {
		digest := "sha256:" + d.Name()
		if !d.IsDir() || !hexDigestRE().MatchString(digest) {
			continue
		}
		reason := ""
		if _, r, err := s.checkImage(digest, false); err != nil || r != "" {
			reason = "damaged: " + r
		} else if keep != nil && !keep(digest) {
			reason = "image no VM or workspace uses"
		}
		if reason == "" {
			continue
		}
		if err := s.pruneTree(ctx, &res, filepath.Join(s.imagesRoot(), d.Name()), reason); err != nil {
			return res, err
		}
		removed[digest] = true
	}
	if len(removed) > 0 {
		refs := readRefs(s.imagesRoot())
		for r, d := range refs {
			if removed[d] {
				delete(refs, r)
			}
		}
		if err := writeRefs(s.imagesRoot(), refs); err != nil {
			return res, err
		}
	}
	return res, nil
}

// imageKernelsInUse marks the cached kernels intact images were built
// with, so Prune keeps them.
func (s *Store) imageKernelsInUse(inUse map[string]bool) {
	all, _ := s.ListImages()
	for _, st := range all {
		if st.Manifest != nil && st.Damaged == "" {
			inUse[kernelCacheKey(st.Manifest.Kernel.Version)] = true
		}
	}
}

// Resolve returns the installed environment a VM boots: a catalog
// environment by name (as Get), or an image by reference, pinned to digest
// when one is given.
func (s *Store) Resolve(name, digest string) (Installed, error) {
	if IsImage(name) {
		return s.GetImage(name, digest)
	}
	return s.Get(name)
}
