package envstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/catalog"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

const mergedUsrHooks = "/usr/share/mmdebstrap/hooks/merged-usr"

// bootstrapTool picks mmdebstrap, else debootstrap.
func bootstrapTool() (name, path string, err error) {
	for _, t := range []string{"mmdebstrap", "debootstrap"} {
		if p, err := lookTool(t); err == nil {
			return t, p, nil
		}
	}
	return "", "", errdefs.New(errdefs.ErrFailedPrecondition, "install one: `apt-get install mmdebstrap`",
		"building an environment needs mmdebstrap or debootstrap, and neither is installed")
}

// bootstrapArgs is the command line that builds a minbase root in dir.
func bootstrapArgs(tool string, e catalog.Entry, dir, mirror string, hookDirExists bool) []string {
	args := []string{"--variant=minbase"}
	switch tool {
	case "mmdebstrap":
		args = append(args, "--architectures="+catalog.Arch)
		if hookDirExists {
			args = append(args, "--hook-dir="+mergedUsrHooks)
		}
	default:
		args = append(args, "--arch="+catalog.Arch)
	}
	if len(e.Packages) > 0 {
		args = append(args, "--include="+strings.Join(e.Packages, ","))
	}
	return append(args, catalog.Suite, dir, mirror)
}

// buildRootfs bootstraps the root tree of e under work/root and makes img
// from it.
func (s *Store) buildRootfs(ctx context.Context, e catalog.Entry, tool, toolPath, mirror, work, img string, emit func(Event)) error {
	root := filepath.Join(work, "root")
	_, err := os.Stat(mergedUsrHooks)
	args := bootstrapArgs(tool, e, root, mirror, err == nil)
	emit(Event{Phase: "rootfs", Message: fmt.Sprintf("%s %s (%s)", tool, catalog.Suite, mirror)})
	start := time.Now()
	if _, err := runTool(ctx, command{name: toolPath, args: args, privateMounts: true}); err != nil {
		return fmt.Errorf("bootstrap root filesystem: %w", err)
	}
	s.log.Info("bootstrapped root", "tool", tool, "seconds", time.Since(start).Seconds())
	if err := customizeRoot(root); err != nil {
		return fmt.Errorf("prepare root filesystem: %w", err)
	}
	if err := makeImage(ctx, root, img, emit); err != nil {
		return err
	}
	emit(Event{Phase: "image", Message: "removing the build tree"})
	return removeTree(root)
}

// customizeRoot trims caches and adds what every guest expects.
func customizeRoot(root string) error {
	for _, pat := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"} {
		ms, _ := filepath.Glob(filepath.Join(root, pat))
		for _, m := range ms {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	// debootstrap copies the host's resolv.conf in; mmdebstrap removes it.
	// The guest gets its resolver at boot, never the build host's.
	if st, err := os.Lstat(filepath.Join(root, "etc/resolv.conf")); err == nil && st.Mode().IsRegular() {
		if err := os.Remove(filepath.Join(root, "etc/resolv.conf")); err != nil {
			return err
		}
	}
	if err := writeInRoot(root, "etc/hostname", "pyro\n", true); err != nil {
		return err
	}
	if err := writeInRoot(root, "etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tpyro\n::1\tlocalhost ip6-localhost ip6-loopback\n", false); err != nil {
		return err
	}
	for _, d := range []struct {
		path string
		mode fs.FileMode
	}{{"workspace", 0o755}, {"run", 0o755}, {"tmp", 0o777 | fs.ModeSticky}} {
		p := filepath.Join(root, d.path)
		st, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(p, d.mode); err != nil {
				return err
			}
		case err != nil:
			return err
		case !st.IsDir():
			return fmt.Errorf("/%s in the root is not a directory", d.path)
		}
	}
	return nil
}

// writeInRoot writes a file inside a root tree without following a symlink
// that the tree's packages may have put there.
func writeInRoot(root, rel, content string, replace bool) error {
	p := filepath.Join(root, rel)
	if st, err := os.Lstat(p); err == nil {
		if !replace {
			return nil
		}
		if st.IsDir() {
			return fmt.Errorf("/%s in the root is a directory", rel)
		}
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// imageSizeMiB sizes the image for a tree using treeBytes of disk: 25%
// slack plus 128 MiB, rounded up to 64 MiB.
func imageSizeMiB(treeBytes int64) int64 {
	mib := (treeBytes*5/4)>>20 + 128
	return (mib + 63) / 64 * 64
}

// makeImage builds a journal-less ext4 image from root with mke2fs -d (no
// loop mount). Owners and modes are copied as they are. The image has no
// journal so a read-only mount never needs a replay; mount it ro,noload.
func makeImage(ctx context.Context, root, img string, emit func(Event)) error {
	used, err := diskUsage(root)
	if err != nil {
		return fmt.Errorf("measure root filesystem: %w", err)
	}
	size := imageSizeMiB(used)
	for attempt := 0; ; attempt++ {
		emit(Event{Phase: "image", Message: fmt.Sprintf("mke2fs %d MiB ext4 from a %d MiB tree", size, used>>20), Total: size << 20})
		_ = os.Remove(img)
		_, err := runTool(ctx, command{name: "mke2fs", args: []string{
			"-q", "-F", "-t", "ext4", "-b", "4096", "-O", "^has_journal", "-m", "0", "-L", "pyro-root",
			"-E", "root_owner=0:0", "-d", root, img, fmt.Sprintf("%dM", size),
		}})
		if err == nil {
			return nil
		}
		if attempt < 3 && (strings.Contains(err.Error(), "Could not allocate block") || strings.Contains(err.Error(), "No space left")) {
			size = (size*3/2 + 63) / 64 * 64
			continue
		}
		_ = os.Remove(img)
		return fmt.Errorf("make ext4 image: %w", err)
	}
}
