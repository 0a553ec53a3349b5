package vm

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
)

// ForkRAM is a live-saved guest's main RAM taken out of its state
// (qemu.SplitRAM) into a sealed memfd that every fork maps copy-on-write
// instead of reading it: a fork's restore then loads only the device
// state. The memfd lives in the process that made it (the fork's caller)
// and is reached by the forks' supervisors through /proc (Path), so it
// goes away with that process: nothing is left in /dev/shm after a crash.
// Sealed against writes, growing and shrinking, a fork's QEMU (which
// opens its RAM file read-write) cannot change what the other forks map.
type ForkRAM struct {
	// State is the device state left (a file beside the saved one).
	State string
	f     *os.File
	ino   uint64
}

// Path is where other processes of the same user open the RAM file.
func (r *ForkRAM) Path() string {
	return "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(int(r.f.Fd()))
}

// Inode is the RAM file's inode (ForkSource.RAMInode).
func (r *ForkRAM) Inode() uint64 { return r.ino }

// openForkRAM opens the forks' RAM file src names, and checks that it is
// the one its caller made: Path goes through the caller's descriptor
// table, so once the caller closed the RAM (a fork whose start outlived
// the call that gave up on it) or died, the same path names whatever that
// descriptor number is then - in a long-lived MCP server, another fork
// call's RAM, of another workspace, whose memory a fork must never map.
// The file must have the recorded inode and the seals SplitForkRAM set.
func openForkRAM(src ForkSource) (*os.File, error) {
	f, err := os.Open(src.RAM)
	if err != nil {
		return nil, fmt.Errorf("the forks' saved RAM is gone (the fork's caller ended): %w", err)
	}
	var st unix.Stat_t
	serr := unix.Fstat(int(f.Fd()), &st)
	seals, ferr := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	const want = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK
	if serr != nil || ferr != nil || src.RAMInode == 0 || st.Ino != src.RAMInode ||
		st.Mode&unix.S_IFMT != unix.S_IFREG || seals&want != want {
		f.Close()
		return nil, errors.New("the forks' saved RAM is gone (the fork's caller ended): its descriptor names another file")
	}
	return f, nil
}

// Close drops this process's hold of the RAM (QEMUs that mapped it keep
// theirs).
func (r *ForkRAM) Close() error { return r.f.Close() }

// SplitForkRAM splits the QEMU state saved at state for a guest of
// memBytes of RAM: its main RAM into a sealed memfd, the rest into
// state+".dev". On error nothing is left and forks restore from state
// as it is.
func SplitForkRAM(state string, memBytes int64) (_ *ForkRAM, err error) {
	in, err := os.Open(state)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	fd, err := unix.MemfdCreate("pyro-fork-ram", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "pyro-fork-ram")
	dev := state + ".dev"
	var mem []byte
	defer func() {
		if mem != nil {
			_ = unix.Munmap(mem)
		}
		if err != nil {
			f.Close()
			os.Remove(dev)
		}
	}()
	out, err := os.OpenFile(dev, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	_, err = qemu.SplitRAM(in, out, func(name string, n uint64) ([]byte, error) {
		if int64(n) != memBytes {
			return nil, fmt.Errorf("ram block %q of %d bytes, the guest has %d", name, n, memBytes)
		}
		if err := f.Truncate(int64(n)); err != nil {
			return nil, err
		}
		mem, err = unix.Mmap(fd, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		return mem, err
	})
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("take the ram out of the saved state: %w", err)
	}
	// Writable shared mappings must be gone before the write seal.
	if err = unix.Munmap(mem); err != nil {
		return nil, err
	}
	mem = nil
	if _, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		return nil, fmt.Errorf("seal the ram file: %w", err)
	}
	var st unix.Stat_t
	if err = unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	return &ForkRAM{State: dev, f: f, ino: st.Ino}, nil
}
