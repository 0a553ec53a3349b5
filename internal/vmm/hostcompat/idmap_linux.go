package hostcompat

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The sandbox runs in a user namespace whose ids 0..idCount-1 are host ids
// base..base+idCount-1: root in the sandbox is an unprivileged host uid
// that owns nothing on the host, and its capabilities count only inside
// its own namespaces. A range (not one id) keeps the image's other owners
// (daemon users, _apt, ...) distinct inside.
//
// The range is the "pyro" entry of /etc/subuid and /etc/subgid when the
// operator made one (the usual place to reserve subordinate ids), else
// the first range from defaultIDBase up that no other entry of those files
// holds (see pickBase). Every sandbox shares it: sandboxes never see each other's
// files, processes, IPC or network (separate mount, PID, IPC and network
// namespaces), so a shared range costs nothing there, and it needs no
// allocation state.
//
// The read-only image and the workspace image are owned by host root (ids
// as the guest sees them). They are mounted idmapped (mount_setattr
// MOUNT_ATTR_IDMAP) through the sandbox's mapping, so image uid N shows as
// N inside and writes land on disk as N, as in a VM; the tmpfs that holds
// the overlay's upper layer is simply owned by the sandbox's root.
const (
	defaultIDBase  = 100000
	idCount        = 65536
	subordinateFor = "pyro"
)

// idRange is the host ids the sandbox's ids 0..Count-1 map to.
type idRange struct {
	UIDBase uint32 `json:"uid_base"`
	GIDBase uint32 `json:"gid_base"`
	Count   uint32 `json:"count"`
}

// sandboxIDs returns the id range for sandboxes on this host.
func sandboxIDs() idRange {
	uids, _ := os.ReadFile("/etc/subuid")
	gids, _ := os.ReadFile("/etc/subgid")
	return sandboxIDsFrom(string(uids), string(gids))
}

// sandboxIDsFrom picks the range from the contents of /etc/subuid and
// /etc/subgid.
func sandboxIDsFrom(subuid, subgid string) idRange {
	return idRange{UIDBase: pickBase(subuid), GIDBase: pickBase(subgid), Count: idCount}
}

// pickBase returns the "pyro" entry's base when it holds idCount ids,
// else the first base from defaultIDBase whose ids overlap no other
// entry: those are another user's rootless containers, which run as the
// same host ids and could then read the sandbox's /proc/PID/environ and
// /proc/PID/root.
func pickBase(file string) uint32 {
	if b, n, ok := parseSubordinate(strings.NewReader(file), subordinateFor); ok && n >= idCount {
		return b
	}
	base := uint64(defaultIDBase)
	for moved := true; moved; { // base only grows: this ends
		moved = false
		for _, line := range strings.Split(file, "\n") {
			f := strings.Split(strings.TrimSpace(line), ":")
			if len(f) != 3 {
				continue
			}
			b, err1 := strconv.ParseUint(f[1], 10, 32)
			n, err2 := strconv.ParseUint(f[2], 10, 32)
			if err1 == nil && err2 == nil && b < base+idCount && base < b+n {
				base, moved = b+n, true
			}
		}
	}
	if base+idCount > 1<<32-1 {
		return defaultIDBase // no free range: nothing better to do
	}
	return uint32(base)
}

// parseSubordinate reads user's first range from a subuid/subgid file.
func parseSubordinate(r io.Reader, user string) (base, count uint32, ok bool) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		f := strings.Split(strings.TrimSpace(s.Text()), ":")
		if len(f) != 3 || f[0] != user {
			continue
		}
		b, err1 := strconv.ParseUint(f[1], 10, 32)
		n, err2 := strconv.ParseUint(f[2], 10, 32)
		// Host id 0 must stay out of the range, and the range must fit.
		if err1 != nil || err2 != nil || b == 0 || b+n > 1<<32-1 {
			continue
		}
		return uint32(b), uint32(n), true
	}
	return 0, 0, false
}

func (r idRange) uidMap() []syscall.SysProcIDMap {
	return []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(r.UIDBase), Size: int(r.Count)}}
}

func (r idRange) gidMap() []syscall.SysProcIDMap {
	return []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(r.GIDBase), Size: int(r.Count)}}
}

// mappingUserns returns an fd of a user namespace with r's mapping, for
// idmapped mounts. A mount needs the namespace before the sandbox (which
// gets its own, identical one) exists, so a short-lived child holds it
// while the fd is opened.
func mappingUserns(r idRange) (int, error) {
	cmd := exec.Command("/proc/self/exe", HiddenArg, roleHold)
	cmd.Args[0] = "pyro"
	cmd.Dir = "/"
	cmd.Env = []string{sandboxPath}
	in, err := cmd.StdinPipe()
	if err != nil {
		return -1, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: r.uidMap(),
		GidMappings: r.gidMap(),
		Pdeathsig:   syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("start user namespace holder: %w", err)
	}
	// The mappings are written before the child execs, so the namespace
	// is complete once Start returns.
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	in.Close() // the holder exits at EOF
	if werr := cmd.Wait(); err == nil && werr != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("user namespace holder: %w", werr)
	}
	if err != nil {
		return -1, fmt.Errorf("open user namespace: %w", err)
	}
	return fd, nil
}

// runHold is the holder: it keeps its user namespace alive until its
// stdin closes.
func runHold() {
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// idmapMount mounts a copy of the mount at src on dst, its ids shifted
// through userns (and attrs set on it).
func idmapMount(src, dst string, userns int, attrs uint64) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("clone mount %s: %w", src, err)
	}
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | attrs, Userns_fd: uint64(userns)}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("idmap mount %s (the kernel needs idmapped mounts, Linux 5.12+ for ext4): %w", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach idmapped mount on %s: %w", dst, err)
	}
	return nil
}
