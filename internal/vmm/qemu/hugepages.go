package qemu

import (
	"sync"

	"golang.org/x/sys/unix"
)

// QEMU marks guest RAM for transparent huge pages. A restored guest's RAM
// is loaded page by page from the state stream, and its scattered pages
// then fault in as 2 MiB pages: measured with scripts/bench-pss.sh (10 idle
// restored debian:12 workspaces, 1 GiB guests, ~102 MiB of non-zero RAM
// each), 197 MiB PSS per workspace with huge pages and 162 MiB without.
// The flag belongs to the process and is inherited across fork and exec,
// so setting it in the process that starts QEMU covers every QEMU it
// starts; it also covers pyro's own heap, which gains nothing from huge
// pages. Kernels without PR_SET_THP_DISABLE (before 3.15) keep huge pages.
var noHugePages = sync.OnceValue(func() error {
	return unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0)
})
