package qemu

import (
	"bufio"
	"io"
)

// Forks map their RAM instead of reading it (issue #14). A fork's QEMU
// used to read the whole saved RAM (~130 MB for a debian:12 workspace)
// from the state stream into its own memory: ~200 of the ~270 ms of CPU
// its restore took before the guest ran, in every fork. SplitRAM takes
// main guest RAM out of a saved stream into memory the caller provides
// (a sealed memfd, vm.SplitForkRAM), leaving the device state and ROM
// blocks in the stream; each fork's QEMU then maps that file privately
// (-mem-path, share off: copy-on-write, so a fork's writes stay its own
// and its untouched pages are shared by every fork) and loads only the
// small rest. QEMU writes nothing into guest RAM before an incoming
// migration (rom_reset skips it), and a stream without the block's pages
// leaves the mapped memory as it is.

// SplitRAM copies the saved stream in to out without the pages of main
// guest RAM ("<machine>.ram"), which it writes into ram(name, size)'s
// memory instead (at their guest-physical offsets; zero pages are left as
// the memory has them, zero when fresh). A stream this parser does not
// know is an error: the caller then restores from the stream as saved.
func SplitRAM(in io.Reader, out io.Writer, ram func(name string, n uint64) ([]byte, error)) (CompactStats, error) {
	c := compactor{r: bufio.NewReaderSize(in, 1<<20), w: bufio.NewWriterSize(out, 1<<20), ram: ram}
	if err := c.run(); err != nil {
		return c.stats, err
	}
	if c.ramMem == nil {
		return c.stats, errNotCompactable
	}
	return c.stats, c.w.Flush()
}
