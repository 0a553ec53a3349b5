package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// probeTimeout bounds a KVM probe boot. A working KVM boots to power-off in
// well under a second; a broken nested KVM either aborts at once or hangs on
// an emulation failure, which this deadline cuts short.
const probeTimeout = 6 * time.Second

// KVMVerdict is the cached outcome of a KVM probe.
type KVMVerdict struct {
	Usable   bool   `json:"usable"`
	Reason   string `json:"reason"`
	BootID   string `json:"boot_id"`
	QEMU     string `json:"qemu"` // binary path, size and mtime
	ProbedAt string `json:"probed_at"`
}

// ProbeKVM decides whether QEMU can use KVM here by booting the given
// guest to power-off under KVM. The verdict is cached in cacheDir per host
// boot and QEMU version, so only the first run after a reboot pays for it.
// PYRO_ACCEL=tcg|kvm overrides the probe.
func ProbeKVM(ctx context.Context, cacheDir, binary string, spec vmm.Spec) KVMVerdict {
	switch os.Getenv("PYRO_ACCEL") {
	case "tcg":
		return KVMVerdict{Usable: false, Reason: "PYRO_ACCEL=tcg"}
	case "kvm":
		return KVMVerdict{Usable: true, Reason: "PYRO_ACCEL=kvm"}
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return KVMVerdict{Usable: false, Reason: "/dev/kvm is missing"}
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return KVMVerdict{Usable: false, Reason: "cannot open /dev/kvm: " + err.Error()}
	}
	f.Close()

	// The QEMU binary's identity (not its --version, which costs a
	// process start on every run) keys the cache with the host boot.
	version := binary
	if st, err := os.Stat(binary); err == nil {
		version = fmt.Sprintf("%s size=%d mtime=%d", binary, st.Size(), st.ModTime().UnixNano())
	}
	bootID := readTrim("/proc/sys/kernel/random/boot_id")
	cache := filepath.Join(cacheDir, "kvm-probe.json")
	var v KVMVerdict
	if b, err := os.ReadFile(cache); err == nil && json.Unmarshal(b, &v) == nil && v.BootID == bootID && v.QEMU == version {
		return v
	}
	v = probeBoot(ctx, binary, spec)
	v.BootID, v.QEMU, v.ProbedAt = bootID, version, time.Now().UTC().Format(time.RFC3339)
	if b, err := json.Marshal(v); err == nil {
		_ = os.MkdirAll(cacheDir, 0o755)
		_ = fsutil.WriteCache(cache, b, 0o644)
	}
	return v
}

func probeBoot(ctx context.Context, binary string, spec vmm.Spec) KVMVerdict {
	dir, err := os.MkdirTemp("", "pyro-kvm-probe-")
	if err != nil {
		return KVMVerdict{Reason: "probe: " + err.Error()}
	}
	defer os.RemoveAll(dir)
	spec.Dir = vmdir.Dir(dir)
	spec.VCPUs, spec.MemMiB, spec.Network = 1, 256, false
	spec.Cmdline = append(spec.Cmdline, "pyro.poweroff=1")
	m, err := New(binary, "kvm").Start(ctx, spec)
	if err != nil {
		return KVMVerdict{Reason: "probe: " + err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	select {
	case <-m.Done():
		if m.Err() != nil {
			return KVMVerdict{Reason: "kvm probe boot failed: " + fsutil.LastLines(filepath.Join(dir, "vmm.log"), 2)}
		}
		if log := fsutil.LastLines(filepath.Join(dir, "vmm.log"), 3); strings.Contains(log, "error") || strings.Contains(log, "failed") {
			return KVMVerdict{Reason: "kvm probe boot failed: " + log}
		}
		return KVMVerdict{Usable: true, Reason: "probe boot under kvm powered off cleanly"}
	case <-ctx.Done():
		_ = m.Stop(context.Background())
		return KVMVerdict{Reason: "kvm probe boot did not finish within " + probeTimeout.String() + " (nested KVM emulation failure?)"}
	}
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}
