package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// User work (exec, services, shells, readiness commands) runs in a cgroup
// v2 of its own, UserCgroupDir, whose pids.max and memory.max stay below
// the guest's totals. The agent and init stay in the root cgroup, outside
// those limits, with oom_score_adj -1000: a fork bomb, a memory hog or a
// full tmpfs inside the guest stops at the user cgroup's limits, and the
// agent keeps answering. Each process the agent starts gets a leaf of its
// own (cgroup v2 allows processes only in leaves once controllers are
// enabled), entered at clone time (clone3 CLONE_INTO_CGROUP), so no child
// runs a single instruction outside it; a timeout or stop ends the whole
// leaf with cgroup.kill, whatever the processes did to their process
// groups and sessions.

const (
	cgroupRoot = "/sys/fs/cgroup"
	// UserCgroupDir is the cgroup of user work in a guest.
	UserCgroupDir = cgroupRoot + "/pyro-user"
	// agentMemReserve bounds the memory kept for the agent, init and the
	// kernel outside the user cgroup: an eighth of the guest, at least
	// minMemReserve, at most maxMemReserve.
	minMemReserve = 48 << 20
	maxMemReserve = 512 << 20
	// userCPUWeight is the user cgroup's cpu.weight (default 100): the
	// agent's threads in the root cgroup weigh 1024 each, so under a CPU
	// storm the agent still gets most of a CPU when it needs one.
	userCPUWeight = 20
	// leftoverPidsMax is the process limit of a finished exec's leaf that
	// still has processes: enough for a background server and its
	// workers; a fork bomb left behind stops growing at once, and the
	// next command's sweep kills it.
	leftoverPidsMax = 64
)

// setupUserCgroup mounts cgroup2 (if needed), enables the pids, memory and
// cpu controllers and creates UserCgroupDir with its limits. It runs in
// init before the agent starts. Controllers the kernel lacks are skipped;
// without cgroup2 at all it returns an error and the agent runs without a
// user cgroup (as in host-compat).
func setupUserCgroup() error {
	if err := os.MkdirAll(cgroupRoot, 0o755); err != nil {
		return err
	}
	var st unix.Statfs_t
	if unix.Statfs(cgroupRoot, &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		if err := unix.Mount("cgroup2", cgroupRoot, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "nsdelegate"); err != nil {
			return fmt.Errorf("mount cgroup2 on %s: %w", cgroupRoot, err)
		}
	}
	avail, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers"))
	if err != nil {
		return err
	}
	var enable []string
	for _, c := range []string{"pids", "memory", "cpu"} {
		if strings.Contains(" "+strings.TrimSpace(string(avail))+" ", " "+c+" ") {
			enable = append(enable, "+"+c)
		}
	}
	ctl := strings.Join(enable, " ")
	if err := writeCgroupFile(cgroupRoot, "cgroup.subtree_control", ctl); err != nil {
		return err
	}
	if err := os.Mkdir(UserCgroupDir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	// The leaves below get the same controllers, so each one is accounted
	// (and weighed for CPU) on its own.
	if err := writeCgroupFile(UserCgroupDir, "cgroup.subtree_control", ctl); err != nil {
		return err
	}
	var errs []error
	if memTotal := memTotalKiB() << 10; memTotal > 0 {
		reserve := min(max(memTotal/8, minMemReserve), maxMemReserve)
		if memTotal > 2*reserve {
			errs = append(errs, writeCgroupFile(UserCgroupDir, "memory.max", strconv.FormatInt(memTotal-reserve, 10)))
		}
		// No swap in a guest, but say so: nothing of the user's goes
		// to swap to dodge memory.max.
		_ = writeCgroupFile(UserCgroupDir, "memory.swap.max", "0")
	}
	if n := userPidsMax(); n > 0 {
		errs = append(errs, writeCgroupFile(UserCgroupDir, "pids.max", strconv.Itoa(n)))
	}
	if strings.Contains(ctl, "cpu") {
		errs = append(errs, writeCgroupFile(UserCgroupDir, "cpu.weight", strconv.Itoa(userCPUWeight)))
	}
	return errors.Join(errs...)
}

// userPidsMax leaves room below the kernel's thread limit (which scales
// with guest memory and also bounds the agent) for the agent, init and
// kernel threads: a quarter of it, at least 256.
func userPidsMax() int {
	b, err := os.ReadFile("/proc/sys/kernel/threads-max")
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= 0 {
		return 0
	}
	return max(n-max(n/4, 256), 64)
}

// protectFromOOM makes the calling process (init, and by inheritance the
// agent) the OOM killer's last choice: never.
func protectFromOOM() error {
	return os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0)
}

func writeCgroupFile(dir, name, value string) error {
	if err := os.WriteFile(filepath.Join(dir, name), []byte(value), 0); err != nil {
		return fmt.Errorf("cgroup %s: write %q to %s: %w", dir, value, name, err)
	}
	return nil
}

// userCgroup hands out leaves of the user cgroup. A nil *userCgroup (no
// cgroup: host-compat, tests on the host) hands out nil leaves, which do
// nothing, and processes are placed as before (process groups only).
type userCgroup struct {
	dir string
	seq atomic.Uint64

	mu sync.Mutex
	// leftovers are leaves of finished execs that still had processes
	// (background jobs may outlive their exec). They are the first to go
	// when the user cgroup is out of processes or memory.
	leftovers map[*leaf]struct{}
	// spare is an empty exec leaf made ahead (makeSpare): the next exec
	// takes it instead of creating one. Creating a cgroup runs the
	// kernel's css allocation for every controller, which a guest
	// restored from a memory snapshot translates afresh (TCG) on its first
	// command: ~20-30 ms of `pyro run -- true`. The snapshot's guest made
	// the spare before it was saved, so every restored guest has one.
	spare *leaf

	// events is cgroup.events of dir, kept open (unpopulated).
	eventsMu sync.Mutex
	events   int // its descriptor, valid while eventsOK
	eventsOK bool
}

// unpopulated reports whether no process is left in the user cgroup
// ("populated 0" in its cgroup.events). Every quiet exec's claim asks it
// (internal/agent/quiet.go), so the file is kept open and read again from
// its start (the kernel makes the content afresh on each read at offset
// 0): opening it anew for each claim (path walk, kernfs open, the Go
// poller's registration and removal) took ~0.7 ms of the guest's emulated
// CPU (TCG) on every checkpointed exec's path. An error says "populated"
// (nothing is claimed on a guess) and the next call opens the file again.
func (u *userCgroup) unpopulated() bool {
	u.eventsMu.Lock()
	defer u.eventsMu.Unlock()
	if !u.eventsOK {
		fd, err := unix.Open(filepath.Join(u.dir, "cgroup.events"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return false
		}
		u.events, u.eventsOK = fd, true
	}
	var buf [256]byte
	n, err := unix.Pread(u.events, buf[:], 0)
	if err != nil {
		_ = unix.Close(u.events)
		u.eventsOK = false
		return false
	}
	return populatedZero(string(buf[:n]))
}

// populatedZero reports whether cgroup.events content says "populated 0".
func populatedZero(events string) bool {
	for _, line := range strings.Split(events, "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return strings.TrimSpace(v) == "0"
		}
	}
	return false
}

// spareKind is the kind of leaf made ahead: an exec's (services, shells
// and readiness commands make theirs when they start).
const spareKind = "exec"

func newUserCgroup(dir string) *userCgroup {
	if dir == "" {
		return nil
	}
	u := &userCgroup{dir: dir, leftovers: map[*leaf]struct{}{}}
	// Leaves of an agent process that died (init restarts it) are this
	// one's leftovers now.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() {
			u.leftovers[&leaf{u: u, path: filepath.Join(dir, e.Name())}] = struct{}{}
		}
	}
	return u
}

// leaf is one process's cgroup (with everything it starts).
type leaf struct {
	u    *userCgroup
	path string
}

// newLeaf creates a leaf named kind-N, or hands out the spare made ahead
// for an exec.
func (u *userCgroup) newLeaf(kind string) (*leaf, error) {
	if u == nil {
		return nil, nil
	}
	if kind == spareKind {
		u.mu.Lock()
		l := u.spare
		u.spare = nil
		u.mu.Unlock()
		// A root command may have removed it: then a new one.
		if l != nil && unix.Access(l.path, unix.F_OK) == nil {
			return l, nil
		}
	}
	return u.makeLeaf(kind)
}

// makeSpare makes the next exec's leaf ahead, when there is none: at the
// agent's start (so a memory snapshot's guest is saved with one) and after
// each exec's result is sent, off the next command's path.
func (u *userCgroup) makeSpare() {
	if u == nil {
		return
	}
	u.mu.Lock()
	has := u.spare != nil
	u.mu.Unlock()
	if has {
		return
	}
	l, err := u.makeLeaf(spareKind)
	if err != nil {
		return // the exec makes its own
	}
	u.mu.Lock()
	if u.spare == nil {
		u.spare, l = l, nil
	}
	u.mu.Unlock()
	if l != nil {
		_ = unix.Rmdir(l.path)
	}
}

// makeLeaf creates a new leaf named kind-N.
func (u *userCgroup) makeLeaf(kind string) (*leaf, error) {
	for {
		l := &leaf{u: u, path: filepath.Join(u.dir, kind+"-"+strconv.FormatUint(u.seq.Add(1), 10))}
		err := os.Mkdir(l.path, 0o755)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create cgroup %s: %w", l.path, err)
		}
		// A leftover of an earlier agent process: take the next number.
	}
}

// kill ends every process in the leaf at once (cgroup.kill); on a kernel
// without it, SIGKILL to each listed process until none is left.
func (l *leaf) kill() {
	if l == nil {
		return
	}
	if writeCgroupFile(l.path, "cgroup.kill", "1") == nil {
		return
	}
	for range 100 {
		pids := l.pids()
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (l *leaf) pids() []int {
	b, err := os.ReadFile(filepath.Join(l.path, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// populated reports whether a process (zombies aside) is still in the
// leaf.
func (l *leaf) populated() bool {
	if l == nil {
		return false
	}
	f, err := os.Open(filepath.Join(l.path, "cgroup.events"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "populated "); ok {
			return v != "0"
		}
	}
	return false
}

// waitEmpty waits up to d for the leaf to empty.
func (l *leaf) waitEmpty(d time.Duration) bool {
	end := time.Now().Add(d)
	for l.populated() {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// release is called when the leaf's main process has ended: an empty leaf
// is removed; one with processes left is kept as a leftover, limited to
// leftoverPidsMax processes, until it empties or is reclaimed.
func (l *leaf) release() {
	if l == nil {
		return
	}
	if unix.Rmdir(l.path) == nil {
		return
	}
	_ = writeCgroupFile(l.path, "pids.max", strconv.Itoa(leftoverPidsMax))
	l.u.mu.Lock()
	l.u.leftovers[l] = struct{}{}
	l.u.mu.Unlock()
}

// remove kills what is left in the leaf and removes it.
func (l *leaf) remove() {
	if l == nil {
		return
	}
	l.kill()
	l.waitEmpty(5 * time.Second)
	_ = unix.Rmdir(l.path)
	l.u.mu.Lock()
	delete(l.u.leftovers, l)
	l.u.mu.Unlock()
}

// sweep runs before each start: it removes leftover leaves that have
// emptied on their own, and kills those whose processes ran into a limit
// (a fork bomb left behind by a finished exec never stops by itself, and
// would starve every later command).
func (u *userCgroup) sweep() {
	if u == nil {
		return
	}
	u.mu.Lock()
	var bombs []*leaf
	for l := range u.leftovers {
		switch {
		case unix.Rmdir(l.path) == nil || errors.Is(unix.Access(l.path, unix.F_OK), unix.ENOENT):
			delete(u.leftovers, l)
		case l.hitLimit():
			bombs = append(bombs, l)
		}
	}
	u.mu.Unlock()
	for _, l := range bombs {
		l.remove()
	}
}

// hitLimit reports whether a fork in the leaf failed for the process
// limit (pids.events counts them in the forking process's own cgroup) or
// the OOM killer killed one of its processes (memory.events, counted in
// the victim's cgroup).
func (l *leaf) hitLimit() bool {
	return cgroupEvent(l.path, "pids.events", "max") > 0 || cgroupEvent(l.path, "memory.events", "oom_kill") > 0
}

// cgroupEvent reads one counter of a cgroup's *.events file (0 if absent).
func cgroupEvent(dir, file, key string) int64 {
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// reclaim kills the leftovers of finished execs and reports whether there
// were any: a new command of the user's matters more than the background
// jobs of earlier ones once the user cgroup is out of processes or memory.
func (u *userCgroup) reclaim() bool {
	if u == nil {
		return false
	}
	u.mu.Lock()
	list := make([]*leaf, 0, len(u.leftovers))
	for l := range u.leftovers {
		list = append(list, l)
	}
	u.mu.Unlock()
	for _, l := range list {
		l.remove()
	}
	return len(list) > 0
}

// startUser starts cmd as user work: in a new leaf of the user cgroup
// (when the agent has one), entered at clone time, and with the OOM score
// the agent's own -1000 would otherwise pass on reset to 0. If the user
// cgroup is out of processes or memory, the leftovers of earlier execs are
// reclaimed and the start is tried once more. The caller owns the leaf:
// kill it to end everything the command started, release or remove it
// once the command has ended.
// It returns the started command: cmd, or the copy that was retried.
func (a *Agent) startUser(cmd *exec.Cmd, kind string) (*exec.Cmd, *leaf, error) {
	a.user.sweep()
	l, err := a.startIn(cmd, kind)
	if err != nil && (errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.ENOMEM)) && a.user.reclaim() {
		a.log.Info("user cgroup full: killed the leftovers of earlier commands", "err", err)
		// A Cmd starts once; the files it was given are still open.
		cmd = &exec.Cmd{Path: cmd.Path, Args: cmd.Args, Env: cmd.Env, Dir: cmd.Dir,
			Stdin: cmd.Stdin, Stdout: cmd.Stdout, Stderr: cmd.Stderr, SysProcAttr: cmd.SysProcAttr, WaitDelay: cmd.WaitDelay}
		l, err = a.startIn(cmd, kind)
	}
	return cmd, l, err
}

func (a *Agent) startIn(cmd *exec.Cmd, kind string) (*leaf, error) {
	if a.opts.RefuseCommands != nil {
		return nil, a.opts.RefuseCommands
	}
	l, err := a.user.newLeaf(kind)
	if err != nil {
		return nil, err
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if a.opts.Credential != nil {
		cmd.SysProcAttr.Credential = a.opts.Credential
	}
	var fd int = -1
	if l != nil {
		fd, err = unix.Open(l.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			_ = unix.Rmdir(l.path)
			return nil, fmt.Errorf("open cgroup %s: %w", l.path, err)
		}
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	err = cmd.Start()
	if fd >= 0 {
		_ = unix.Close(fd)
	}
	if err != nil {
		if l != nil {
			_ = unix.Rmdir(l.path)
		}
		return nil, err
	}
	if a.user != nil {
		// The agent runs at -1000 and children inherit it; user work
		// must stay killable. (A program that forks within microseconds
		// of its exec passes -1000 on to that child; the leaf's limits
		// and cgroup.kill still bound it.)
		_ = os.WriteFile("/proc/"+strconv.Itoa(cmd.Process.Pid)+"/oom_score_adj", []byte("0"), 0)
	}
	return l, nil
}
