package supervisor

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// closeInherited closes the descriptors the supervisor inherited by
// accident: everything above stderr without close-on-exec. Go opens its own
// with close-on-exec, so only inherited ones match. A supervisor lives
// detached for as long as its guest, so a descriptor its spawner held (a
// lock file under flock(1), a pipe another program waits to see closed)
// would otherwise stay held that long, and pass on to QEMU too.
func closeInherited() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err == nil && flags&unix.FD_CLOEXEC == 0 {
			_ = unix.Close(fd)
		}
	}
}
