package workspace

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// A layered workspace's transfer disk (TransferFile) is a sparse image
// attached read-only to the guest (/dev/vdd). For a large push the host
// writes the push's tar at its start and the guest extracts it from there
// with direct I/O (internal/agent/pushdisk.go), so the bytes move at host
// speed instead of through the guest's emulated CPU. Its content is always
// the host's: the guest cannot write it, and the host never reads it back
// except to replay the same bytes over the agent channel.

// TransferFile is a layered workspace's transfer disk.
const TransferFile = "transfer.img"

// EnsureTransferDisk makes path an image of size bytes (sparse), a disk
// for the VMM to attach. What an earlier push left in it is that
// workspace's own pushed data, so it may stay.
func EnsureTransferDisk(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Size() == size {
		return err
	}
	return f.Truncate(size)
}

// FillTransfer writes the stream r at the start of the transfer disk f,
// at most f's size. more says the stream did not all fit (the disk's size,
// or the host's disk is full): n bytes were taken from r and written, the
// rest is still in r.
func FillTransfer(f *os.File, r io.Reader) (n int64, more bool, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	size := fi.Size()
	buf := make([]byte, 1<<20)
	n, err = io.CopyBuffer(io.NewOffsetWriter(f, 0), io.LimitReader(r, size), buf)
	switch {
	case errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT):
		return n, true, nil
	case err != nil:
		return n, false, err
	}
	return n, n == size, nil
}

// ClearTransfer frees the host blocks of the first n bytes of the
// transfer disk f (it reads as zeros again).
func ClearTransfer(f *os.File, n int64) error {
	if n <= 0 {
		return nil
	}
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, n)
}
