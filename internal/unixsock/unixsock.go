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
	var conn net.Conn
	err := viaShortPath(path, func(p string) (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "unix", p)
		return err
	})
	return conn, err
}

// Exists reports whether a socket file is present at path.
func Exists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// Listen binds a listening unix socket at path, however long: like Dial, a
// long path is bound through /proc/self/fd/N/<name>.
func Listen(path string) (*net.UnixListener, error) {
	var ln *net.UnixListener
	err := viaShortPath(path, func(p string) (err error) {
		ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		return err
	})
	return ln, err
}

// viaShortPath calls f with path, or, when path is too long for
// sockaddr_un, with /proc/self/fd/N/<name> where N is the socket's
// directory held open for the duration of f.
func viaShortPath(path string, f func(string) error) error {
	if len(path) <= maxPath {
		return f(path)
	}
	fd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open socket directory: %w", err)
	}
	defer unix.Close(fd)
	short := fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path))
	if len(short) > maxPath {
		return fmt.Errorf("socket name %q is too long", filepath.Base(path))
	}
	return f(short)
}
