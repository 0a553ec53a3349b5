package hostres

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func TestCheckRequestCapsByHost(t *testing.T) {
	h := Host{CPUs: 2, MemTotalMiB: 4096, MemAvailMiB: 3000, ReserveMiB: 512}
	if err := h.CheckRequest(2, 2048); err != nil {
		t.Fatal(err)
	}
	err := h.CheckRequest(3, 1024)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "vcpu_count 3 exceeds this host's 2 cores") || !strings.Contains(err.Error(), "at most 2") {
		t.Fatalf("vcpus: %v", err)
	}
	err = h.CheckRequest(1, 4000)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "mem_mib 4000 exceeds") || !strings.Contains(err.Error(), "at most 3520") {
		t.Fatalf("memory: %v", err)
	}
}

func TestAdmitBoundsConcurrentGuests(t *testing.T) {
	h := Host{CPUs: 2, MemTotalMiB: 8192, MemAvailMiB: 7000, ReserveMiB: 1024}
	if err := h.Admit(1024); err != nil {
		t.Fatal(err)
	}
	// Guests already promised most of the memory, though they use little
	// of it yet (MemAvailable is high): the next one is refused.
	h.CommittedMiB = 6500
	err := h.Admit(1024)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "not enough host memory") || !strings.Contains(err.Error(), "hint:") {
		t.Fatalf("committed: %v", err)
	}
	// Nothing promised, but the host itself is short of memory.
	h.CommittedMiB, h.MemAvailMiB = 0, 1500
	if err := h.Admit(1024); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("available: %v", err)
	}
}

func TestReserveOverride(t *testing.T) {
	t.Setenv(ReserveEnv, "")
	if r := reserve(2048); r != 512 {
		t.Fatalf("small host reserve %d", r)
	}
	if r := reserve(65536); r != 6553 {
		t.Fatalf("large host reserve %d", r)
	}
	t.Setenv(ReserveEnv, "100")
	if r := reserve(65536); r != 100 {
		t.Fatalf("override %d", r)
	}
}

// The memory promised to running guests is read from their QEMU command
// lines, whatever the -m spelling; other processes do not count.
func TestRunningGuestsFromProc(t *testing.T) {
	proc := t.TempDir()
	write := func(pid string, argv ...string) {
		os.MkdirAll(filepath.Join(proc, pid), 0o755)
		os.WriteFile(filepath.Join(proc, pid, "cmdline"), []byte(strings.Join(argv, "\x00")+"\x00"), 0o644)
	}
	write("10", "/usr/bin/qemu-system-x86_64", "-name", "x", "-m", "1024", "-smp", "1")
	write("11", "qemu-system-x86_64", "-m", "2G")
	write("12", "qemu-system-aarch64", "-m", "size=512M,slots=2")
	write("13", "/bin/sleep", "-m", "4096")
	write("self", "qemu-system-x86_64", "-m", "9999")
	if got, want := runningGuestsMiB(proc), 1024+2048+512+3*vmmOverheadMiB; got != want {
		t.Fatalf("committed %d, want %d", got, want)
	}
}

func TestMeminfo(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	os.WriteFile(p, []byte("MemTotal:       24683604 kB\nMemFree:        1 kB\nMemAvailable:   24092184 kB\n"), 0o644)
	total, avail, err := meminfo(p)
	if err != nil || total != 24105 || avail != 23527 {
		t.Fatalf("%d %d %v", total, avail, err)
	}
}

func TestLimitsFromEnv(t *testing.T) {
	t.Setenv(ConsoleLogEnv, "")
	if Load().ConsoleLogBytes != Defaults.ConsoleLogBytes {
		t.Fatal("default")
	}
	t.Setenv(ConsoleLogEnv, "4096")
	if Load().ConsoleLogBytes != 4096 {
		t.Fatal("override")
	}
	t.Setenv(ConsoleLogEnv, "-3")
	if Load().ConsoleLogBytes != Defaults.ConsoleLogBytes {
		t.Fatal("a bad value keeps the default")
	}
}

func TestCapReader(t *testing.T) {
	b, err := io.ReadAll(CapReader(strings.NewReader("0123456789"), 10, "export", ExportBytesEnv))
	if err != nil || string(b) != "0123456789" {
		t.Fatalf("at the cap: %q %v", b, err)
	}
	_, err = io.ReadAll(CapReader(strings.NewReader("0123456789X"), 10, "export of /workspace", ExportBytesEnv))
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "export of /workspace exceeds the host's cap of 10 bytes") || !strings.Contains(err.Error(), ExportBytesEnv) {
		t.Fatalf("past the cap: %v", err)
	}
}

// CheckRequest (which only compares a request with the host's size) does
// not read every process's command line; Observe (admission) does.
func TestCheckRequestSkipsGuestScan(t *testing.T) {
	scans := 0
	old := scanGuests
	scanGuests = func(string) int { scans++; return 0 }
	t.Cleanup(func() { scanGuests = old })
	if err := CheckRequest(1, 128); err != nil {
		t.Fatal(err)
	}
	if scans != 0 {
		t.Fatalf("CheckRequest scanned the running guests %d times", scans)
	}
	if _, err := Observe(); err != nil {
		t.Fatal(err)
	}
	if scans != 1 {
		t.Fatalf("Observe scanned the running guests %d times, want 1", scans)
	}
}
