package lifecycle

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Temporary files a process killed with -9 leaves in an instance's
// directory, removed when the instance is next started (sweepTempFiles):
//
//	.flat-<pid>.raw   a flattened copy of a workspace's layers
//	                  (internal/workspace chain.go), up to the disk's size
//	.<name>.tmp-<x>   a file being replaced through a temporary file of its
//	                  own (fsutil.ReplaceWith, workspace.CreateDisk)
//
// Only regular files of exactly these names, in the instance's directory
// and the directories right inside it, are removed. The start holds the
// instance lock and its old supervisor has exited, so nothing of this
// instance writes them; still, a flattened copy goes only when its process
// is gone, and a temporary file only when it was not written for
// tempFileAge (each writer renames or removes its file within moments).
var (
	flatFile = regexp.MustCompile(`^\.flat-([0-9]+)\.raw$`)
	tempFile = regexp.MustCompile(`^\..+\.tmp-[^/]+$`)
)

// tempFileAge is how long a temporary file must have been left alone
// before a start removes it.
const tempFileAge = time.Minute

// sweepTempFiles removes the leftovers described above from dir and its
// subdirectories (not followed through links) and returns how many.
func sweepTempFiles(dir vmdir.Dir) (n int, err error) {
	dirs := []string{string(dir)}
	ents, rerr := os.ReadDir(string(dir))
	if rerr != nil {
		return 0, rerr
	}
	for _, e := range ents {
		if e.IsDir() { // a link to a directory is not a directory here
			dirs = append(dirs, filepath.Join(string(dir), e.Name()))
		}
	}
	for _, d := range dirs {
		ents := ents
		if d != string(dir) {
			if ents, rerr = os.ReadDir(d); rerr != nil {
				err = errors.Join(err, rerr)
				continue
			}
		}
		for _, e := range ents {
			if !e.Type().IsRegular() || !leftover(e) {
				continue
			}
			if rerr := os.Remove(filepath.Join(d, e.Name())); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				err = errors.Join(err, rerr)
				continue
			}
			n++
		}
	}
	return n, err
}

// leftover says whether the regular file e is a dead writer's.
func leftover(e os.DirEntry) bool {
	if m := flatFile.FindStringSubmatch(e.Name()); m != nil {
		pid, err := strconv.Atoi(m[1])
		return err == nil && !processAlive(pid)
	}
	if !tempFile.MatchString(e.Name()) {
		return false
	}
	info, err := e.Info()
	return err == nil && time.Since(info.ModTime()) > tempFileAge
}

// processAlive says whether a process pid exists (signal 0; EPERM: it
// exists, another user's).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
