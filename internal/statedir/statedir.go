// Package statedir resolves where pyro keeps its state and names the
// top-level directories in it. Nothing else builds these paths by hand.
package statedir

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Root returns $PYRO_HOME, else $XDG_DATA_HOME/pyro, else ~/.local/share/pyro.
func Root() string {
	if d := os.Getenv("PYRO_HOME"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "pyro")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = "/root"
	}
	return filepath.Join(home, ".local", "share", "pyro")
}

// Dirs are the well-known subdirectories of a state root.
type Dirs struct{ Root string }

func (d Dirs) Environments() string { return filepath.Join(d.Root, "environments") }
func (d Dirs) Cache() string        { return filepath.Join(d.Root, "cache") }
func (d Dirs) VMs() string          { return filepath.Join(d.Root, "vms") }
func (d Dirs) Workspaces() string   { return filepath.Join(d.Root, "workspaces") }

// Prepare creates root if needed (mode 0700) and checks that it is safe to
// keep state in: another local user must not be able to replace or fill
// it. root itself must be owned by this user and writable by no one else;
// every directory above it must be owned by this user or root and be
// writable by no one else, unless it is sticky (like /tmp, where others
// cannot rename what is ours).
func Prepare(root string) error {
	abs, err := filepath.Abs(root)
	if err != nil {
		return errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "set PYRO_HOME to a directory of yours", "state directory %q", root)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "set PYRO_HOME to a writable directory", "cannot create state directory %q", abs)
	}
	return Check(abs, uint32(os.Geteuid()))
}

// Check applies Prepare's rules to an existing absolute root for uid.
func Check(root string, uid uint32) error {
	const hint = "set PYRO_HOME to a directory of yours that others cannot write, or fix it with chown/chmod go-w"
	for p, first := root, true; ; p, first = filepath.Dir(p), false {
		fi, err := os.Stat(p)
		if err != nil {
			return errdefs.Wrap(errdefs.ErrFailedPrecondition, err, hint, "state directory %q", root)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return errdefs.New(errdefs.ErrFailedPrecondition, hint, "cannot read the owner of %q", p)
		}
		what := "directory above the state directory"
		if first {
			what = "state directory"
		}
		switch {
		case !fi.IsDir():
			return errdefs.New(errdefs.ErrFailedPrecondition, hint, "%s %q is not a directory", what, p)
		case st.Uid != uid && (first || st.Uid != 0):
			return errdefs.New(errdefs.ErrFailedPrecondition, hint, "%s %q is owned by uid %d, not by you (uid %d)", what, p, st.Uid, uid)
		case fi.Mode().Perm()&0o022 != 0 && (first || fi.Mode()&os.ModeSticky == 0):
			return errdefs.New(errdefs.ErrFailedPrecondition, hint, "%s %q is writable by others (mode %s)", what, p, modeString(fi.Mode()))
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func modeString(m os.FileMode) string {
	s := fmt.Sprintf("%04o", m.Perm())
	if m&os.ModeSticky != 0 {
		s = fmt.Sprintf("%04o", m.Perm()|0o1000)
	}
	return s
}
