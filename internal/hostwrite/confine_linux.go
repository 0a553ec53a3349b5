package hostwrite

import (
	"os"
	"syscall"
)

// Confine is the process attributes of a tool that parses a guest-written
// image on the host: its own process group (killed whole), killed with its
// parent, and new PID (no other process to signal or trace), network, IPC
// and UTS namespaces (no network at all; as
// an unprivileged user, inside a user namespace that maps only the
// caller). It keeps the caller's uid (it reads the staged push source and
// writes the image copy, both the caller's alone); what it may touch is
// Landlock's to say (tool_linux.go), and it holds no capabilities.
func Confine() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	flags := uintptr(syscall.CLONE_NEWPID | syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS)
	if os.Geteuid() != 0 {
		flags |= syscall.CLONE_NEWUSER
		a.UidMappings = []syscall.SysProcIDMap{{ContainerID: os.Geteuid(), HostID: os.Geteuid(), Size: 1}}
		a.GidMappings = []syscall.SysProcIDMap{{ContainerID: os.Getegid(), HostID: os.Getegid(), Size: 1}}
	}
	a.Cloneflags = flags
	return a
}
