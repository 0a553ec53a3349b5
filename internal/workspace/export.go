package workspace

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// Export writes the tar stream r, pulled from the guest path guest (kind
// as the guest said: agentapi.KindFile or KindDir), to the host path out.
// Everything in r is the guest's choice, so it is normalised on the way
// (tarutil.ExtractOptions.Untrusted with the process umask): no setuid,
// setgid or sticky bits, no mode beyond the umask, no device or fifo, no
// symlink that is absolute or leaves the exported tree (those are listed in
// the result's Skipped), and the archive's "." entry is ignored. A file
// export must arrive as one regular file: out itself never becomes a
// symlink. The tree is extracted into a fresh directory beside out and
// renamed into place, so nothing existing at or under out is ever written
// through; out must not exist unless overwrite is set, and a failed export
// leaves out as it was.
func Export(r io.Reader, guest, kind, out string, overwrite bool) (tarutil.Stats, error) {
	if kind != agentapi.KindFile && kind != agentapi.KindDir {
		return tarutil.Stats{}, errdefs.New(errdefs.ErrUnavailable, "", "export %s: the guest answered with kind %q", guest, kind)
	}
	umask := tarutil.ProcessUmask()
	tmp, err := os.MkdirTemp(filepath.Dir(out), ".pyro-export-*")
	if err != nil {
		return tarutil.Stats{}, err
	}
	defer os.RemoveAll(tmp)
	st, err := tarutil.ExtractTarWith(r, tmp, tarutil.ExtractOptions{Untrusted: true, Umask: umask})
	if err != nil {
		return st, fmt.Errorf("export %s: %w", guest, err)
	}
	from := tmp
	if kind == agentapi.KindFile {
		// The guest names its one entry; only the expected name counts,
		// and only as a regular file.
		from = filepath.Join(tmp, path.Base(guest))
		fi, err := os.Lstat(from)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if st.SkippedCount > 0 {
				return st, errdefs.New(errdefs.ErrInvalidArgument, "export the file it points to, or its directory",
					"export %s: not a regular file (%s)", guest, st.Skipped[0].Reason)
			}
			return st, errdefs.New(errdefs.ErrUnavailable, "", "export %s: the guest sent no file", guest)
		case err != nil:
			return st, err
		case fi.Mode()&fs.ModeSymlink != 0:
			return st, errdefs.New(errdefs.ErrInvalidArgument, "export the file it points to, or its directory",
				"export %s: is a symlink, and the output path never becomes one", guest)
		case !fi.Mode().IsRegular():
			return st, errdefs.New(errdefs.ErrInvalidArgument, "export its directory instead", "export %s: not a regular file", guest)
		}
	} else if err := os.Chmod(tmp, 0o777&^umask|0o700); err != nil {
		// MkdirTemp made it 0700; a directory export gets what mkdir
		// would give, whatever the guest's "/workspace/." said.
		return st, err
	}
	if err := place(from, out, overwrite); err != nil {
		return st, err
	}
	return st, nil
}

// place renames from to out. Without overwrite it refuses to replace
// anything that appeared at out meanwhile (RENAME_NOREPLACE); with it, an
// existing out (a symlink included, never followed) is removed first.
func place(from, out string, overwrite bool) error {
	if overwrite {
		if err := os.RemoveAll(out); err != nil {
			return err
		}
		return os.Rename(from, out)
	}
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, out, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A file system without RENAME_NOREPLACE: the caller checked
		// that out did not exist.
		return os.Rename(from, out)
	}
	if errors.Is(err, unix.EEXIST) {
		return errdefs.New(errdefs.ErrAlreadyExists, "choose another path, or pass --overwrite", "output %q exists", out)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: out, Err: err}
	}
	return nil
}
