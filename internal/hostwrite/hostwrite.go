// Package hostwrite writes a host directory tree into an ext4 image on the
// host, with e2fsprogs' debugfs (-w), so a sync push into a stopped
// workspace costs host time only (issue #15): under software emulation the
// guest's page cache and ext4 move ~20 MiB/s, debugfs writing a local
// image ~150 MiB/s.
//
// Two inputs, two levels of trust. The tree is the caller's: a private
// staging of the push source (workspace.StageDir), whose names become
// debugfs arguments, so a name debugfs could not take as one quoted
// argument (a quote, a backslash, a control character) makes Script refuse
// and the caller push through the guest. The image is the guest's: hostile
// input to debugfs's parser. So Write runs debugfs confined: Landlock lets
// it read only the staged tree and the system's program directories and
// write only the image, both handed over as descriptors; no capabilities,
// no_new_privs and a seccomp filter (tool_linux.go); its own process
// group and PID, network, IPC and UTS namespaces, rlimits on CPU time,
// memory, file size and open files, a deadline, stdout thrown away, stderr
// bounded, and the image opened only after the limits hold (the script
// opens it). Without Landlock the host path is not used.
// Whatever debugfs reports on stderr fails the write; the caller then
// throws the image away (it writes a copy, never the live layer).
package hostwrite

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// ErrUnsupported: the tree holds something the host path does not write
// (a name debugfs cannot take, a time ext4 cannot hold here); the caller
// pushes through the guest instead.
var ErrUnsupported = errors.New("not writable on the host")

// Stats counts what a script writes (as tarutil.Stats counts a push).
type Stats struct {
	Files int   // regular files and symlinks
	Dirs  int   // directories
	Bytes int64 // regular file content
}

// Owner is the owner of everything written: a push through the guest
// extracts as root without keeping the source's owners.
const Owner = 0

// Script returns the debugfs commands that write the tree at tree (given
// to Write with it) into
// the image's directory dest (which must exist): directories, regular
// files and symlinks with their permission bits (setuid, setgid and sticky
// included), nanosecond modification times (access times the same) and
// owner root, as tarutil.ExtractTar would have made them in the guest.
// Nothing at dest's entries may exist yet (the caller checked): debugfs
// never replaces. Devices, fifos and sockets are left out (the staging
// has none). Directory attributes come last, deepest first, as the
// guest's extraction sets them.
func Script(tree, dest string) ([]byte, Stats, error) {
	var st Stats
	var b strings.Builder
	if err := quotable(dest); err != nil {
		return nil, st, err
	}
	type dir struct {
		path string
		fi   fs.FileInfo
	}
	var dirs []dir
	err := filepath.WalkDir(tree, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == tree {
			return nil
		}
		rel, err := filepath.Rel(tree, p)
		if err != nil {
			return err
		}
		in := dest + "/" + filepath.ToSlash(rel)
		if err := quotable(in); err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			fmt.Fprintf(&b, "mkdir %s\n", q(in))
			dirs = append(dirs, dir{in, fi})
			st.Dirs++
			return nil
		case fi.Mode().IsRegular():
			// Through the staging root's descriptor: the confined tool
			// sees no other host path (tool_linux.go). write gives the
			// inode the staged file's permission bits (setuid, setgid and
			// sticky included), which are the source's.
			fmt.Fprintf(&b, "write %s %s\n", q(treePath+"/"+filepath.ToSlash(rel)), q(in))
			if err := attrs(&b, in, fi, 0); err != nil {
				return err
			}
			st.Files++
			st.Bytes += fi.Size()
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if target == "" || quotable(target) != nil || strings.HasPrefix(target, "<") {
				return fmt.Errorf("%w: symlink %s -> %q", ErrUnsupported, rel, target)
			}
			fmt.Fprintf(&b, "symlink %s %s\n", q(in), q(target))
			if err := attrs(&b, in, fi, 0); err != nil {
				return err
			}
			st.Files++
		default:
			// Not in a staging; skipped as the guest's extraction would.
		}
		return nil
	})
	if err != nil {
		return nil, st, err
	}
	slices.SortStableFunc(dirs, func(a, b dir) int {
		return strings.Count(b.path, "/") - strings.Count(a.path, "/")
	})
	for _, d := range dirs {
		typ := uint32(0o040000)
		if d.fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) == 0o755 {
			typ = 0 // as mkdir made it
		}
		if err := attrs(&b, d.path, d.fi, typ); err != nil {
			return nil, st, err
		}
	}
	return []byte(b.String()), st, nil
}

// Mkdirs returns the debugfs commands that make the directories paths
// (parents first) as a guest's MkdirAll(p, 0o755) would: mode 0755, owner
// root (as debugfs's mkdir makes them), modified at t.
func Mkdirs(paths []string, t time.Time) ([]byte, error) {
	var b strings.Builder
	for _, p := range paths {
		if err := quotable(p); err != nil {
			return nil, err
		}
		qp := q(p)
		fmt.Fprintf(&b, "mkdir %s\n", qp)
		times(&b, qp, t.Unix(), int64(t.Nanosecond()))
	}
	return []byte(b.String()), nil
}

// attrs sets the mode (typ: the type bits; 0 keeps the mode debugfs gave
// the inode) and times of the inode at in. The owner is the one debugfs
// gives every inode it makes, whoever runs it: root (Owner), as a push
// through the guest extracts. Each command here is a lookup of in and an
// inode write (~20 us): a 1,000-file push set 7 fields per file, 4 now.
func attrs(b *strings.Builder, in string, fi fs.FileInfo, typ uint32) error {
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w: no stat of %s", ErrUnsupported, in)
	}
	sec, nsec := sys.Mtim.Sec, sys.Mtim.Nsec
	// ext4 keeps seconds past 2038 in the extra field's epoch bits, which
	// debugfs's "@N" does not set: such times go through the guest.
	if sec < 0 || sec > 1<<31-1 {
		return fmt.Errorf("%w: modification time of %s out of range", ErrUnsupported, in)
	}
	qi := q(in)
	if typ != 0 {
		fmt.Fprintf(b, "sif %s mode 0%o\n", qi, typ|uint32(sys.Mode)&0o7777)
	}
	times(b, qi, sec, nsec)
	return nil
}

// times sets the modification and access times of the inode at the
// quoted path qi (debugfs leaves the nanoseconds of a new inode 0).
func times(b *strings.Builder, qi string, sec, nsec int64) {
	for _, f := range []string{"mtime", "atime"} {
		fmt.Fprintf(b, "sif %s %s @%d\n", qi, f, sec)
		if nsec != 0 {
			fmt.Fprintf(b, "sif %s %s_extra %d\n", qi, f, nsec<<2)
		}
	}
}

// quotable refuses what debugfs cannot take as one double-quoted argument
// on one script line.
func quotable(s string) error {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
			return fmt.Errorf("%w: name %q", ErrUnsupported, s)
		}
	}
	return nil
}

func q(s string) string { return `"` + s + `"` }
