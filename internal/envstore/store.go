// Package envstore installs, verifies and prunes pyro environments: a kernel
// (vmlinux plus the few modules the guest needs) and an ext4 root filesystem,
// described by a manifest.
//
// Layout under the store root:
//
//	<root>/.lock                         flock held while building, installing, pruning
//	<root>/.tmp-<random>/                partial build (removed on failure, or by Prune)
//	<root>/<safe-name>/<version>/        one installed environment ("debian:12" -> "debian_12")
//	    manifest.json                    written last: its presence means complete
//	    vmlinux  rootfs.ext4  modules/<name>.ko
//	<cacheDir>/kernels/<package-version>/ extracted kernel shared by all environments
//
// Concurrency: Pull and Prune take the exclusive lock, so concurrent pulls
// build once (the second waits, then finds the environment installed). Get
// takes no lock: an install is a rename, so Get sees the old or the new
// directory, never a partial one.
package envstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/pyro-mcp/pyro/internal/catalog"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

const (
	lockFile  = ".lock"
	tmpPrefix = ".tmp-"
)

// Store is the set of environments installed under one root.
type Store struct {
	root     string
	cacheDir string
	log      *slog.Logger
	build    buildFunc // the seam tests replace
	// kernelForImage finds the kernel image environments get (a seam).
	kernelForImage func(ctx context.Context, emit func(Event)) (string, kernelCache, error)
}

// Option configures a Store.
type Option func(*Store)

// WithLogger makes the store log to l. The default discards.
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) {
		if l != nil {
			s.log = l
		}
	}
}

// New returns the store rooted at root (statedir.Dirs{}.Environments()) that
// caches extracted kernels under cacheDir (statedir.Dirs{}.Cache()).
func New(root, cacheDir string, opts ...Option) *Store {
	s := &Store{root: root, cacheDir: cacheDir, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(s)
	}
	s.build = s.localBuild
	s.kernelForImage = s.imageKernel
	return s
}

// Installed is one verified, installed environment.
type Installed struct {
	Dir      string
	Manifest Manifest
}

// KernelPath is the PVH-bootable ELF vmlinux.
func (i Installed) KernelPath() string { return filepath.Join(i.Dir, KernelFile) }

// RootfsPath is the ext4 root image. It has no journal; mount it read-only.
func (i Installed) RootfsPath() string { return filepath.Join(i.Dir, RootfsFile) }

// ModulePaths are the kernel modules to load, absolute, in load order.
func (i Installed) ModulePaths() []string {
	out := make([]string, len(i.Manifest.Modules))
	for n, m := range i.Manifest.Modules {
		out[n] = filepath.Join(i.Dir, filepath.FromSlash(m))
	}
	return out
}

func (s *Store) versionDir(e catalog.Entry) string {
	return filepath.Join(s.root, safeName(e.Name), e.Version)
}

func lookup(name string) (catalog.Entry, error) {
	if err := validateName(name); err != nil {
		return catalog.Entry{}, err
	}
	e, err := catalog.Lookup(name)
	if err != nil {
		return e, err
	}
	if err := validateVersion(e.Version); err != nil {
		return e, err
	}
	return e, nil
}

func pullHint(name string) string { return fmt.Sprintf("run `pyro env pull %s`", name) }

func rebuildHint(name string) string {
	return fmt.Sprintf("run `pyro env pull %s` to rebuild it", name)
}

// Get returns the installed current version of name after a fast check:
// the manifest parses, every listed file is present with its size, and
// vmlinux and the modules match their sha256. The rootfs is not hashed here.
//
// An image reference (see IsImage) is looked up with GetImage.
func (s *Store) Get(name string) (Installed, error) {
	if IsImage(name) {
		return s.GetImage(name, "")
	}
	e, err := lookup(name)
	if err != nil {
		return Installed{}, err
	}
	inst, reason, err := s.check(e, false)
	if err != nil {
		return Installed{}, err
	}
	if reason != "" {
		return Installed{}, errdefs.New(errdefs.ErrFailedPrecondition, rebuildHint(name), "environment %q is damaged: %s", name, reason)
	}
	return inst, nil
}

// check reads and verifies the install of e. A missing directory is
// ErrNotFound; anything wrong with a present one is returned as reason.
func (s *Store) check(e catalog.Entry, full bool) (Installed, string, error) {
	dir := s.versionDir(e)
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Installed{}, "", errdefs.New(errdefs.ErrNotFound, pullHint(e.Name), "environment %q is not installed", e.Name)
		}
		return Installed{}, "", fmt.Errorf("inspect environment %q: %w", e.Name, err)
	}
	inst := Installed{Dir: dir}
	m, err := readManifest(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return inst, "partial install: " + ManifestFile + " is missing", nil
		}
		return inst, err.Error(), nil
	}
	inst.Manifest = m
	return inst, verify(dir, m, e.Name, e.Version, full), nil
}

// Status is what Inspect and List report about one catalog environment.
type Status struct {
	Entry     catalog.Entry `json:"entry"`
	Installed bool          `json:"installed"`
	Dir       string        `json:"dir,omitempty"`
	Manifest  *Manifest     `json:"manifest,omitempty"`
	Damaged   string        `json:"damaged,omitempty"` // reason, or "" when intact or not installed
	SizeBytes int64         `json:"size_bytes"`        // disk space used by the install
}

// Inspect reports the install state of the current version of name, with the
// same fast check as Get.
func (s *Store) Inspect(name string) (Status, error) {
	e, err := lookup(name)
	if err != nil {
		return Status{}, err
	}
	st := Status{Entry: e}
	inst, reason, err := s.check(e, false)
	if errors.Is(err, errdefs.ErrNotFound) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	st.Dir = inst.Dir
	st.Damaged = reason
	if inst.Manifest.Name != "" {
		m := inst.Manifest
		st.Manifest = &m
		st.Installed = true
	}
	st.SizeBytes, _ = diskUsage(inst.Dir)
	return st, nil
}

// List reports every catalog environment with its install state.
func (s *Store) List() ([]Status, error) {
	var out []Status
	for _, e := range catalog.All() {
		st, err := s.Inspect(e.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// diskUsage is the space a tree occupies (allocated blocks: the rootfs image
// is sparse). Hard links are counted once per tree.
func diskUsage(root string) (int64, error) {
	var total int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			if st.Nlink > 1 && !d.IsDir() {
				if seen[st.Ino] {
					return nil
				}
				seen[st.Ino] = true
			}
			total += st.Blocks * 512
			return nil
		}
		total += info.Size()
		return nil
	})
	return total, err
}
