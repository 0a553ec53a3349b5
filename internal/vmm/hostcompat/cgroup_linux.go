package hostcompat

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The cgroup of a sandbox enforces its mem_mib, vcpu_count and a pids
// limit on the host. The host side (Backend.Start, root) creates it as
// <root>/pyro/<vm id> and removes it once the sandbox has exited; the
// sandbox's outer init moves itself into it before it starts anything, so
// every sandbox process is inside from its first instruction.
//
// cgroup v2 (a unified hierarchy mounted at the root) is the normal case.
// Hosts still on the v1 (or hybrid) layout get the same limits from the
// v1 memory, pids and cpu controllers, each under its own mount.

// cgroupRoot is where the cgroup filesystems are mounted; a variable so
// unit tests can point it at a directory of plain files.
var cgroupRoot = "/sys/fs/cgroup"

// cgroupParent is the directory under each hierarchy holding pyro's
// sandboxes.
const cgroupParent = "pyro"

// pidsMax bounds the processes (and threads) of one sandbox: far above
// what builds and test runs use, far below what starves the host.
const pidsMax = 1024

// cpuPeriodUS is the CFS period the vCPU quota is expressed in.
const cpuPeriodUS = 100000

var cgroupIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// limits are what a sandbox's cgroup enforces.
type limits struct {
	MemMiB int
	VCPUs  int
	Pids   int
}

// cgroup is one sandbox's cgroup: one directory on v2, one per controller
// on v1.
type cgroup struct {
	Dirs []string
	V2   bool
}

// createCgroup makes the cgroup named id with lim applied. It fails when
// a limit cannot be set: a sandbox without them could take the host down.
func createCgroup(id string, lim limits) (cg *cgroup, err error) {
	if !cgroupIDPattern.MatchString(id) {
		return nil, fmt.Errorf("cgroup name %q: want letters, digits, '_', '.' or '-'", id)
	}
	if lim.MemMiB <= 0 || lim.VCPUs <= 0 || lim.Pids <= 0 {
		return nil, fmt.Errorf("cgroup limits must be positive: %+v", lim)
	}
	mem := strconv.FormatInt(int64(lim.MemMiB)<<20, 10)
	quota := strconv.Itoa(lim.VCPUs * cpuPeriodUS)
	pids := strconv.Itoa(lim.Pids)
	defer func() {
		if err != nil && cg != nil {
			_ = cg.remove()
			cg = nil
		}
	}()
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		parent := filepath.Join(cgroupRoot, cgroupParent)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, err
		}
		// The controllers must be enabled on every level above the
		// sandbox's cgroup.
		for _, d := range []string{cgroupRoot, parent} {
			if err := enableControllers(d, "memory", "pids", "cpu"); err != nil {
				return nil, err
			}
		}
		reapStale(parent)
		dir := filepath.Join(parent, id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
		cg = &cgroup{Dirs: []string{dir}, V2: true}
		return cg, writeAll(dir, [][2]string{
			{"memory.max", mem},
			{"memory.swap.max", "0"},
			{"pids.max", pids},
			{"cpu.max", quota + " " + strconv.Itoa(cpuPeriodUS)},
		}, "memory.swap.max")
	}
	cg = &cgroup{}
	for _, c := range []struct {
		ctrl     string
		files    [][2]string
		optional string
	}{
		// memsw (memory+swap) exists only with swap accounting; it must
		// be set after the memory limit it may not undercut.
		{"memory", [][2]string{{"memory.limit_in_bytes", mem}, {"memory.memsw.limit_in_bytes", mem}}, "memory.memsw.limit_in_bytes"},
		{"pids", [][2]string{{"pids.max", pids}}, ""},
		{"cpu", [][2]string{{"cpu.cfs_period_us", strconv.Itoa(cpuPeriodUS)}, {"cpu.cfs_quota_us", quota}}, ""},
	} {
		hier := filepath.Join(cgroupRoot, c.ctrl)
		if _, err := os.Stat(filepath.Join(hier, "cgroup.procs")); err != nil {
			return cg, fmt.Errorf("no cgroup v2 at %s and no v1 %s controller: %w", cgroupRoot, c.ctrl, err)
		}
		parent := filepath.Join(hier, cgroupParent)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return cg, err
		}
		reapStale(parent)
		dir := filepath.Join(parent, id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return cg, err
		}
		cg.Dirs = append(cg.Dirs, dir)
		if err := writeAll(dir, c.files, c.optional); err != nil {
			return cg, err
		}
	}
	return cg, nil
}

func enableControllers(dir string, ctrls ...string) error {
	have, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	enabled := strings.Fields(string(have))
	var add []string
	for _, c := range ctrls {
		if !slices.Contains(enabled, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(add, " ")), 0); err != nil {
		return fmt.Errorf("enable cgroup controllers %v in %s: %w", add, dir, err)
	}
	return nil
}

// writeAll writes each file's value in dir, in order. A missing optional
// file (a knob the kernel was built without) is skipped.
func writeAll(dir string, files [][2]string, optional string) error {
	for _, f := range files {
		p := filepath.Join(dir, f[0])
		if _, err := os.Stat(p); f[0] == optional && errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := os.WriteFile(p, []byte(f[1]), 0); err != nil {
			return fmt.Errorf("set %s to %s: %w", p, f[1], err)
		}
	}
	return nil
}

// reapStale removes sandbox cgroups left empty by a pyro that died before
// removing them. Only directories older than a minute are touched (a
// fresh one may be waiting for its sandbox), and rmdir of a cgroup that
// still holds processes fails, so a live sandbox is never affected.
func reapStale(parent string) {
	ents, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range ents {
		if info, err := e.Info(); err == nil && e.IsDir() && time.Since(info.ModTime()) > time.Minute {
			_ = unix.Rmdir(filepath.Join(parent, e.Name()))
		}
	}
}

// join moves the calling process (all its threads) into the cgroup.
func (cg *cgroup) join() error {
	pid := []byte(strconv.Itoa(os.Getpid()))
	for _, d := range cg.Dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), pid, 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", d, err)
		}
	}
	return nil
}

// remove kills whatever is left in the cgroup and removes it, retrying
// for a short while as the killed processes go away.
func (cg *cgroup) remove() error {
	deadline := time.Now().Add(3 * time.Second)
	var errs []error
	for _, d := range cg.Dirs {
		if cg.V2 {
			_ = os.WriteFile(filepath.Join(d, "cgroup.kill"), []byte("1"), 0)
		}
		for {
			killAll(d)
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// killAll SIGKILLs the processes listed in the cgroup (v1 has no
// cgroup.kill; on v2 it catches what raced with it).
func killAll(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}
