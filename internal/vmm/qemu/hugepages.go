package qemu

import (
	"sync"

	"golang.org/x/sys/unix"
)

// QEMU marks guest RAM for transparent huge pages. A restored guest's RAM
// is loaded page by page from the state stream, and its scattered pages
// then fault in as 2 MiB pages: measured with scripts/bench-pss.sh (10 idle
// restored debian:12 workspaces, 1 GiB guests, ~102 MiB of non-zero RAM
// each), 197 MiB PSS per workspace with huge pages and 162 MiB without. So
// QEMU runs without them, except where a spec asks for them
// (vmm.Spec.HugePages: forks, whose restores are faster with them). The
// flag belongs to the process and is inherited across fork and exec, so
// it is set in the process that starts QEMU, for each start, under
// startMu; it also covers pyro's own heap, which gains nothing from huge
// pages. Kernels without PR_SET_THP_DISABLE (before 3.15) keep huge pages.
var startMu sync.Mutex

// startWithHugePages runs start, which starts one QEMU, with transparent
// huge pages allowed for it when on and off otherwise.
func startWithHugePages(on bool, start func() error) error {
	startMu.Lock()
	defer startMu.Unlock()
	off := uintptr(1)
	if on {
		off = 0
	}
	_ = unix.Prctl(unix.PR_SET_THP_DISABLE, off, 0, 0, 0) // best effort: memory and speed figures only
	return start()
}
