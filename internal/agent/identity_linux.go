package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// A guest restored from a memory snapshot is, byte for byte, every other
// guest restored from it: same kernel RNG state, clock, hostname,
// machine-id and MAC. handleIdentity makes it a machine of its own before
// the host lets anything else run (agentapi.PathIdentity).

// isHostname reports whether s is a DNS label of lowercase letters,
// digits and inner hyphens (1 to 63 bytes). Checked by hand, not with a
// regexp: the matcher is code every restored guest would translate anew.
func isHostname(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isMachineID reports whether s is 32 lowercase hex digits.
func isMachineID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// identityState remembers that the workspace disk is mounted (a second
// mount on top would hide the first).
type identityState struct {
	mu        sync.Mutex
	workspace bool
}

// machineIDPath is where the machine-id goes (a variable for tests).
var machineIDPath = "/etc/machine-id"

func (s *Agent) handleIdentity(w http.ResponseWriter, r *http.Request) {
	var req agentapi.IdentityRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "decode identity request: %v", err))
		return
	}
	st := newSteps(req.Timings) // from here: the request is decoded
	resp, err := s.identify(req, st)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// identify checks and applies an identity (PathIdentity, and the first
// call: first.go).
func (s *Agent) identify(req agentapi.IdentityRequest, st *steps) (agentapi.IdentityResponse, error) {
	if err := checkIdentity(req); err != nil {
		return agentapi.IdentityResponse{}, err
	}
	apply := s.applyIdentity
	if s.applyFake != nil {
		apply = s.applyFake
	}
	resp, err := apply(req, st)
	if err != nil {
		return resp, err
	}
	// Every guest restored from the same saved state would count its
	// quiet epochs on from the same value: start afresh.
	s.quiet.reseed(req.Entropy)
	st.mark("quiet")
	if req.Inherited {
		// After the identity, as the JSON call and the first frame
		// answer it (first.go): what a fork still runs.
		resp.Inherited = s.inherited()
	}
	resp.Timings = st.String()
	return resp, nil
}

func checkIdentity(req agentapi.IdentityRequest) error {
	switch {
	case len(req.Entropy) < 16 || len(req.Entropy) > agentapi.IdentityEntropyBytes:
		return errorf(errdefs.ErrInvalidArgument, "entropy of %d bytes (want 16 to %d)", len(req.Entropy), agentapi.IdentityEntropyBytes)
	case !isHostname(req.Hostname):
		return errorf(errdefs.ErrInvalidArgument, "hostname %q is not a DNS label", req.Hostname)
	case !isMachineID(req.MachineID):
		return errorf(errdefs.ErrInvalidArgument, "machine id %q is not 32 hex digits", req.MachineID)
	case req.UnixNano <= 0:
		return errorf(errdefs.ErrInvalidArgument, "no clock")
	case req.WorkspaceBytes < 0:
		return errorf(errdefs.ErrInvalidArgument, "workspace size %d", req.WorkspaceBytes)
	}
	if req.MAC != "" {
		if hw, err := net.ParseMAC(req.MAC); err != nil || len(hw) != 6 {
			return errorf(errdefs.ErrInvalidArgument, "mac %q is not an ethernet address", req.MAC)
		}
	}
	return nil
}

// applyIdentity does the work in the order that matters: the RNG first,
// so nothing after it (including this agent) draws from the shared state.
// st times the steps (nil: not asked).
func (s *Agent) applyIdentity(req agentapi.IdentityRequest, st *steps) (agentapi.IdentityResponse, error) {
	if err := reseedRNG(s.kept.urandomFD(), req.Entropy); err != nil {
		return agentapi.IdentityResponse{}, errorf(errdefs.ErrUnavailable, "reseed kernel rng: %v", err)
	}
	st.mark("rng")
	ts := unix.NsecToTimespec(req.UnixNano)
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return agentapi.IdentityResponse{}, errorf(errdefs.ErrUnavailable, "set clock: %v", err)
	}
	if err := unix.Sethostname([]byte(req.Hostname)); err != nil {
		return agentapi.IdentityResponse{}, errorf(errdefs.ErrUnavailable, "set hostname: %v", err)
	}
	st.mark("clock+hostname")
	s.kept.writeHosts(req.Hostname)
	st.mark("hosts")
	if err := s.kept.writeMachineID([]byte(req.MachineID + "\n")); err != nil {
		return agentapi.IdentityResponse{}, errorf(errdefs.ErrUnavailable, "write machine id: %v", err)
	}
	st.mark("machine-id")
	resp := agentapi.IdentityResponse{Hostname: req.Hostname, MachineID: req.MachineID}
	if req.MAC != "" {
		if err := setMAC("eth0", req.MAC); err != nil {
			return resp, errorf(errdefs.ErrUnavailable, "set mac: %v", err)
		}
		resp.MAC = req.MAC
		st.mark("mac")
	}
	if req.MountWorkspace {
		s.identity.mu.Lock()
		defer s.identity.mu.Unlock()
		if s.identity.workspace {
			return resp, errorf(errdefs.ErrFailedPrecondition, "the workspace disk is already mounted")
		}
		if err := mountFreshWorkspace(req.WorkspaceBytes, req.WorkspaceLayered); err != nil {
			return resp, errorf(errdefs.ErrUnavailable, "%v", err)
		}
		s.identity.workspace = true
		resp.Workspace = true
		st.mark("mount")
	}
	// Debug: an info line would go to the serial console, through the
	// tty and UART code of a kernel that a restore has not translated yet.
	s.log.Debug("identity refreshed", "hostname", req.Hostname, "workspace", resp.Workspace)
	resp.Health = s.health()
	return resp, nil
}

// reseedRNG credits b to the kernel's input pool (RNDADDENTROPY) and forces
// the CRNG to reseed from it (RNDRESEEDCRNG), so the next read of
// /dev/urandom differs from every other clone's. fd is /dev/urandom kept
// open (identity_kept.go), or -1 to open it here.
func reseedRNG(fd int, b []byte) error {
	if fd < 0 {
		var err error
		if fd, err = unix.Open("/dev/urandom", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
			return err
		}
		defer unix.Close(fd)
	}
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}

// setMAC changes an interface's hardware address (virtio-net accepts a
// live change; other drivers want the link down first).
func setMAC(name, mac string) error {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	set := func() error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		// struct sockaddr in ifr_hwaddr: family, then the address.
		raw := make([]byte, 16)
		binary.NativeEndian.PutUint16(raw, unix.ARPHRD_ETHER)
		copy(raw[2:], hw)
		copy(unsafe.Slice((*byte)(unsafe.Pointer(ifrData(ifr))), 16), raw)
		return unix.IoctlIfreq(fd, unix.SIOCSIFHWADDR, ifr)
	}
	err = set()
	if errors.Is(err, unix.EBUSY) {
		if err := ifDown(fd, name); err != nil {
			return err
		}
		err = set()
		if uerr := ifUp(fd, name); err == nil {
			err = uerr
		}
	}
	return err
}

// ifrData points at the union part of an ifreq (after the name).
func ifrData(ifr *unix.Ifreq) unsafe.Pointer {
	return unsafe.Add(unsafe.Pointer(ifr), unix.IFNAMSIZ)
}

func ifDown(fd int, name string) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() &^ unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// sizeWait bounds the wait for the guest kernel to see a workspace disk
// resized on the host after a restore.
const sizeWait = 10 * time.Second

// mountFreshWorkspace mounts the workspace disk(s) after a restore. The
// snapshot's guest probed placeholder disks in the same slots (the kernel
// read their first blocks for the partition scan), so every cached block
// of each device is dropped first (BLKFLSBUF) and, when the host says how
// big the real disk is, the guest waits until the kernel sees that size.
// (A layered workspace's baseline placeholder is larger than any baseline,
// so its ext4 always fits the size the guest kept.)
func mountFreshWorkspace(wantBytes int64, layered bool) error {
	disks := []string{WorkspaceDisk}
	if layered {
		disks = append(disks, WorkspaceBaseDisk)
	}
	for _, disk := range disks {
		if err := dropCachedBlocks(disk); err != nil {
			return err
		}
	}
	if wantBytes > 0 {
		if err := waitDiskSize(WorkspaceDisk, wantBytes); err != nil {
			return err
		}
	}
	return mountWorkspaceDisks(layered)
}

func dropCachedBlocks(disk string) error {
	fd, err := unix.Open(disk, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open workspace disk: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.BLKFLSBUF, 0); err != nil {
		return fmt.Errorf("drop cached blocks of %s: %w", disk, err)
	}
	return nil
}

func waitDiskSize(disk string, wantBytes int64) error {
	fd, err := unix.Open(disk, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open workspace disk: %w", err)
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(sizeWait)
	for {
		var n uint64
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n))); e != 0 {
			return fmt.Errorf("size of %s: %w", disk, e)
		}
		if int64(n) == wantBytes {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("workspace disk shows %d bytes, the host has %d", n, wantBytes)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
