package agent

import (
	"errors"

	"golang.org/x/sys/unix"
)

// keptFiles are the files an identity refresh writes, opened once by the
// agent of a guest that may be saved as a memory snapshot (so every guest
// restored from it has them open). Under TCG each restored guest
// translates afresh every kernel path it runs, and measured in restored
// guests the opens were most of the identity's file work: opening
// /dev/urandom 10-40 ms (devtmpfs lookup, chrdev_open; no later command
// needs that code) of the 20-60 ms RNG step, and opening /etc/hosts for
// writing 14-32 ms (the overlay's write open; a later exec opens files
// for reading only) of the 45-80 ms hosts step, at load 5-8. With the
// files open the refresh is an ioctl, a stat, a pread and a pwrite.
type keptFiles struct {
	urandom          int // -1: none
	hosts, machineID keptFile
}

// keptFile is a regular file opened read-write, with the identity of its
// inode: a file replaced since (a fork of a workspace whose user renamed
// another hosts file into place) is written by path instead.
type keptFile struct {
	fd       int // -1: none
	path     string
	dev, ino uint64
}

// maxKeptBytes bounds what is read of a kept file: a hosts file larger
// than this is left to the path-based rewrite.
const maxKeptBytes = 64 << 10

func openKeptFiles(hosts, machineID string) *keptFiles {
	k := &keptFiles{urandom: -1}
	if fd, err := unix.Open("/dev/urandom", unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
		k.urandom = fd
	}
	k.hosts = openKept(hosts)
	k.machineID = openKept(machineID)
	return k
}

func openKept(path string) keptFile {
	k := keptFile{fd: -1, path: path}
	// O_NONBLOCK: a FIFO put there fails the open instead of blocking it.
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return k
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return k
	}
	k.fd, k.dev, k.ino = fd, st.Dev, st.Ino
	return k
}

// errReplaced: the kept file is no longer the one at its path.
var errReplaced = errors.New("kept file replaced")

// current fails with errReplaced unless the file at k.path is still the
// kept one (a stat: a path walk a later exec runs anyway).
func (k keptFile) current() error {
	if k.fd < 0 {
		return errReplaced
	}
	var st unix.Stat_t
	if err := unix.Lstat(k.path, &st); err != nil || st.Dev != k.dev || st.Ino != k.ino || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return errReplaced
	}
	return nil
}

// read returns the kept file's content (at most maxKeptBytes).
func (k keptFile) read() ([]byte, error) {
	if err := k.current(); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(k.fd, &st); err != nil {
		return nil, err
	}
	if st.Size > maxKeptBytes {
		return nil, errReplaced
	}
	b := make([]byte, st.Size)
	for n := 0; n < len(b); {
		m, err := unix.Pread(k.fd, b[n:], int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			return b[:n], nil
		}
		n += m
	}
	return b, nil
}

// rewrite gives the kept file the content b in place (as rewriteFile
// does for a plain file: written over, cut only when it was longer).
func (k keptFile) rewrite(b []byte) error {
	if err := k.current(); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(k.fd, &st); err != nil {
		return err
	}
	for n := 0; n < len(b); {
		m, err := unix.Pwrite(k.fd, b[n:], int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		n += m
	}
	if st.Size > int64(len(b)) {
		return unix.Ftruncate(k.fd, int64(len(b)))
	}
	return nil
}

// writeHosts is WriteHosts through the kept hosts file when there is one.
func (k *keptFiles) writeHosts(hostname string) {
	if k == nil {
		WriteHosts(hostsPath, hostname)
		return
	}
	if old, err := k.hosts.read(); err == nil {
		if b, add := hostsContent(old, hostname); !add || k.hosts.rewrite(b) == nil {
			return
		}
	}
	WriteHosts(k.hosts.path, hostname)
}

// writeMachineID writes /etc/machine-id, through the kept file when
// there is one.
func (k *keptFiles) writeMachineID(b []byte) error {
	if k == nil {
		return rewriteFile(machineIDPath, b, 0o444)
	}
	if k.machineID.rewrite(b) == nil {
		return nil
	}
	return rewriteFile(k.machineID.path, b, 0o444)
}

// urandomFD is the kept /dev/urandom, or -1.
func (k *keptFiles) urandomFD() int {
	if k == nil {
		return -1
	}
	return k.urandom
}
