// Package project turns a git checkout on the host into a seed for
// /workspace: the files git tracks (`git ls-files -z`), nothing else (no
// .git, no build output, no ignored secrets like .env), read through an
// os.Root so that no path or symlink leads out of the checkout. Symlinks
// are sent as symlinks, never followed. It is how `pyro mcp serve` starts a
// model's workspace from the project the server was started in.
package project

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Bounds on what git may tell us: a checkout with more tracked files than
// this is not something to copy into a VM on every create.
const (
	maxFiles       = 200_000
	maxListBytes   = 64 << 20
	gitTimeout     = 30 * time.Second
	maxSymlinkTarg = 4096
)

// Root returns the top of the git checkout that contains dir, or
// ErrNotFound when dir is not inside one (or git is not installed).
func Root(ctx context.Context, dir string) (string, error) {
	out, err := git(ctx, dir, 4096, "rev-parse", "--show-toplevel")
	if err != nil {
		return "", errdefs.Wrap(errdefs.ErrNotFound, err, "run it inside a git checkout, or pass --project-path DIR", "%s is not in a git checkout", dir)
	}
	root := strings.TrimRight(string(out), "\n")
	if !filepath.IsAbs(root) {
		return "", fmt.Errorf("git gave a relative top level %q", root)
	}
	return root, nil
}

// Files lists the paths git tracks under root (slash-separated, relative).
// Paths that are absolute or climb out of root are refused: a tampered
// index must not name /etc/shadow.
func Files(ctx context.Context, root string) ([]string, error) {
	out, err := git(ctx, root, maxListBytes, "ls-files", "-z", "--cached", "--full-name")
	if err != nil {
		return nil, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "check that `git ls-files` works in it", "cannot list the files of project %s", root)
	}
	var files []string
	for _, p := range bytes.Split(out, []byte{0}) {
		if len(p) == 0 {
			continue
		}
		name := string(p)
		if !fs.ValidPath(name) {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "repair the checkout's index", "project %s lists an unsafe path %q", root, name)
		}
		if len(files) == maxFiles {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "pass seed_path with a smaller directory", "project %s tracks more than %d files", root, maxFiles)
		}
		files = append(files, name)
	}
	return files, nil
}

// git runs git in dir with a deadline and a bound on its output.
func git(ctx context.Context, dir string, maxOut int64, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, gitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_OPTIONAL_LOCKS=0", "LC_ALL=C")
	var out, stderr bytes.Buffer
	cmd.Stdout = &capped{w: &out, n: maxOut}
	cmd.Stderr = &capped{w: &stderr, n: 4096}
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("git %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	if out.Len() >= int(maxOut) {
		return nil, fmt.Errorf("git %s: output larger than %d bytes", args[0], maxOut)
	}
	return out.Bytes(), nil
}

type capped struct {
	w io.Writer
	n int64
}

func (c *capped) Write(p []byte) (int, error) {
	if c.n <= 0 {
		return len(p), nil
	}
	q := p
	if int64(len(q)) > c.n {
		q = q[:c.n]
	}
	c.n -= int64(len(q))
	_, _ = c.w.Write(q)
	return len(p), nil
}

// Stats say what Tar sent.
type Stats struct {
	Files int
	Bytes int64
	// Skipped counts tracked paths that are missing in the worktree, are
	// directories (submodules) or lead out of the checkout.
	Skipped int
}

// Tar streams files (as Files returns them) from root as an uncompressed
// tar: directories first as needed, regular files with their executable
// bit, symlinks as symlinks. Every open goes through an os.Root, so a path
// whose parent is a symlink out of root is skipped, not followed. The
// returned stats are final once the reader hit EOF.
func Tar(root string, files []string) (io.ReadCloser, *Stats, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, nil, errdefs.Wrap(errdefs.ErrNotFound, err, "", "open project %s", root)
	}
	pr, pw := io.Pipe()
	st := &Stats{}
	go func() {
		defer r.Close()
		pw.CloseWithError(writeTar(pw, r, files, st))
	}()
	return pr, st, nil
}

func writeTar(w io.Writer, r *os.Root, files []string, st *Stats) error {
	tw := tar.NewWriter(w)
	dirs := map[string]bool{}
	var mkdirs func(dir string) error
	mkdirs = func(dir string) error {
		if dir == "." || dirs[dir] {
			return nil
		}
		if err := mkdirs(path.Dir(dir)); err != nil {
			return err
		}
		dirs[dir] = true
		return tw.WriteHeader(&tar.Header{Name: dir + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Now()})
	}
	for _, name := range files {
		fi, err := r.Lstat(name)
		if err != nil {
			st.Skipped++ // deleted in the worktree, or its parent leads out
			continue
		}
		switch {
		case fi.Mode().IsRegular():
			f, err := r.OpenFile(name, os.O_RDONLY, 0)
			if err != nil {
				st.Skipped++
				continue
			}
			if err := mkdirs(path.Dir(name)); err != nil {
				f.Close()
				return err
			}
			mode := int64(0o644)
			if fi.Mode()&0o111 != 0 {
				mode = 0o755
			}
			err = tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: fi.Size(), ModTime: fi.ModTime()})
			if err == nil {
				// A file that grows while we read it is cut at its Lstat size.
				var n int64
				n, err = io.Copy(tw, io.LimitReader(f, fi.Size()))
				if err == nil && n < fi.Size() {
					err = fmt.Errorf("project file %s shrank while being read", name)
				}
				st.Bytes += n
			}
			f.Close()
			if err != nil {
				return err
			}
			st.Files++
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := r.Readlink(name)
			if err != nil || len(target) > maxSymlinkTarg {
				st.Skipped++
				continue
			}
			if err := mkdirs(path.Dir(name)); err != nil {
				return err
			}
			if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777, ModTime: fi.ModTime()}); err != nil {
				return err
			}
			st.Files++
		default:
			st.Skipped++ // a submodule's directory, a fifo...
		}
	}
	return tw.Close()
}
