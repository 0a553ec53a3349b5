// Package unixsock dials unix sockets whose path may exceed the kernel's
// 108-byte sun_path limit, which a deep $PYRO_HOME easily does.
package unixsock

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// maxPath is sun_path's size minus the terminating NUL.
const maxPath = 107

// Dial connects to the unix socket at path. A long path is reached through
// /proc/self/fd/N/<name>, where N is an O_PATH descriptor of its directory,
// so the address handed to connect(2) stays short whatever the directory.
func Dial(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	if len(path) <= maxPath {
		return d.DialContext(ctx, "unix", path)
	}
	fd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open socket directory: %w", err)
	}
	defer unix.Close(fd)
	short := fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path))
	if len(short) > maxPath {
		return nil, fmt.Errorf("socket name %q is too long", filepath.Base(path))
	}
	return d.DialContext(ctx, "unix", short)
}

// Exists reports whether a socket file is present at path.
func Exists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// Listen binds a listening unix socket at path, however long: like Dial, a
// long path is bound through /proc/self/fd/N/<name>.
func Listen(path string) (*net.UnixListener, error) {
	if len(path) <= maxPath {
		return net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	}
	fd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open socket directory: %w", err)
	}
	defer unix.Close(fd)
	short := fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path))
	if len(short) > maxPath {
		return nil, fmt.Errorf("socket name %q is too long", filepath.Base(path))
	}
	return net.ListenUnix("unix", &net.UnixAddr{Name: short, Net: "unix"})
}
