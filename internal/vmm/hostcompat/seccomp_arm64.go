package hostcompat

import "golang.org/x/sys/unix"

const (
	nativeArch = unix.AUDIT_ARCH_AARCH64
	x32Bit     = 0 // no second ABI
	sysMknod   = 0 // only mknodat exists
)

// archDenied are the arm64-only syscalls the filter refuses (none).
var archDenied []uint32

// archToolDenied: arm64 has only the *at forms (in toolDenied).
var archToolDenied []uint32
