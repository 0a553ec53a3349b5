// Package hostres keeps guests within what the host can give: a vCPU or
// memory request larger than the host is refused when it is made, and a
// guest only starts when the host's memory can hold it next to the guests
// already running, so pyro never drives the host into the OOM killer.
//
// It also holds the host-side caps on files a guest or a model can grow
// (console log, snapshots, exports, history lines, service logs), each
// configurable through an environment variable (see Load and the README).
package hostres

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// ReserveEnv overrides the memory (MiB) kept for the host itself.
const ReserveEnv = "PYRO_HOST_RESERVE_MIB"

// vmmOverheadMiB is what a VMM process costs beyond its guest's memory
// (QEMU's own heap, TCG translation cache); counted for every guest.
const vmmOverheadMiB = 64

// Host is what the host offers; tests build one by hand.
type Host struct {
	CPUs         int
	MemTotalMiB  int
	MemAvailMiB  int
	ReserveMiB   int // kept for the host: never given to guests
	CommittedMiB int // memory promised to guests already running
}

// Observe reads the host: usable CPUs, /proc/meminfo, and the memory of
// the QEMU guests already running (their -m, whoever started them).
func Observe() (Host, error) {
	h, err := observeSize()
	if err != nil {
		return h, err
	}
	h.CommittedMiB = scanGuests("/proc")
	return h, nil
}

// observeSize is Observe without the running guests: what CheckRequest
// needs. The guests are found by reading every process's command line
// (~8 ms on a loaded host, and a warm run checks its request twice).
func observeSize() (Host, error) {
	h := Host{CPUs: runtime.NumCPU()}
	total, avail, err := meminfo("/proc/meminfo")
	if err != nil {
		return h, err
	}
	h.MemTotalMiB, h.MemAvailMiB = total, avail
	h.ReserveMiB = reserve(total)
	return h, nil
}

// scanGuests is runningGuestsMiB (a variable for tests).
var scanGuests = runningGuestsMiB

// reserve is $PYRO_HOST_RESERVE_MIB, else a tenth of the host's memory,
// at least 512 MiB.
func reserve(totalMiB int) int {
	if v, err := strconv.Atoi(os.Getenv(ReserveEnv)); err == nil && v >= 0 {
		return v
	}
	return max(512, totalMiB/10)
}

// CheckRequest refuses a guest that could never run on this host: more
// vCPUs than host cores, more memory than the host has beyond its reserve.
func (h Host) CheckRequest(vcpus, memMiB int) error {
	if h.CPUs > 0 && vcpus > h.CPUs {
		return errdefs.New(errdefs.ErrInvalidArgument, fmt.Sprintf("use a vcpu_count of at most %d", h.CPUs),
			"vcpu_count %d exceeds this host's %d cores", vcpus, h.CPUs)
	}
	if limit := h.MemTotalMiB - h.ReserveMiB - vmmOverheadMiB; h.MemTotalMiB > 0 && memMiB > limit {
		return errdefs.New(errdefs.ErrInvalidArgument, fmt.Sprintf("use a mem_mib of at most %d (the host keeps %d MiB for itself; %s changes that)", max(limit, 0), h.ReserveMiB, ReserveEnv),
			"mem_mib %d exceeds this host's memory (%d MiB)", memMiB, h.MemTotalMiB)
	}
	return nil
}

// Admit decides whether a guest of memMiB may start now: its memory, plus
// what running guests were promised, must fit in the host's memory beyond
// the reserve (guests touch their memory lazily, so what they use today is
// no bound), and it must fit in what is available right now.
func (h Host) Admit(memMiB int) error {
	need := memMiB + vmmOverheadMiB
	committed := h.MemTotalMiB - h.ReserveMiB - h.CommittedMiB
	avail := h.MemAvailMiB - h.ReserveMiB
	if need <= committed && need <= avail {
		return nil
	}
	return errdefs.New(errdefs.ErrFailedPrecondition,
		fmt.Sprintf("stop or delete a VM or workspace (`pyro vm list`, `pyro workspace list`), or ask for less mem_mib; the host keeps %d MiB for itself (%s)", h.ReserveMiB, ReserveEnv),
		"not enough host memory for a %d MiB guest: %d MiB available, %d MiB of %d promised to running guests",
		memMiB, h.MemAvailMiB, h.CommittedMiB, h.MemTotalMiB)
}

// CheckRequest checks a request against the observed host; a host that
// cannot be read is not held against the request.
func CheckRequest(vcpus, memMiB int) error {
	h, err := observeSize()
	if err != nil {
		return nil
	}
	return h.CheckRequest(vcpus, memMiB)
}

func meminfo(path string) (totalMiB, availMiB int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		switch k {
		case "MemTotal":
			totalMiB = kb / 1024
		case "MemAvailable":
			availMiB = kb / 1024
		}
	}
	if totalMiB == 0 {
		return 0, 0, fmt.Errorf("no MemTotal in %s", path)
	}
	return totalMiB, availMiB, nil
}

// runningGuestsMiB sums the -m of every QEMU process under procRoot (plus
// each one's overhead): what the host has promised to running guests.
func runningGuestsMiB(procRoot string) int {
	ents, _ := os.ReadDir(procRoot)
	sum := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !strings.HasPrefix(filepath.Base(argv[0]), "qemu-system-") {
			continue
		}
		for i := 1; i+1 < len(argv); i++ {
			if argv[i] == "-m" {
				sum += qemuMemMiB(argv[i+1]) + vmmOverheadMiB
				break
			}
		}
	}
	return sum
}

// qemuMemMiB parses a -m value: "1024", "1G", "size=512M,slots=...".
func qemuMemMiB(v string) int {
	v, _, _ = strings.Cut(strings.TrimPrefix(v, "size="), ",")
	mult := 1
	switch {
	case strings.HasSuffix(v, "G"), strings.HasSuffix(v, "g"):
		mult, v = 1024, v[:len(v)-1]
	case strings.HasSuffix(v, "M"), strings.HasSuffix(v, "m"):
		v = v[:len(v)-1]
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0
	}
	return n * mult
}
