//go:build !amd64 && !arm64

package hostcompat

// No filter is written for other architectures: host-compat refuses to
// start there (filterProgram fails).
const (
	nativeArch = 0
	x32Bit     = 0
	sysMknod   = 0
)

var archDenied []uint32

var archToolDenied []uint32
