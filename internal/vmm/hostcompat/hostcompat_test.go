package hostcompat

import (
	"syscall"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

func TestBackendIdentity(t *testing.T) {
	b := New()
	if b.Name() != "host" {
		t.Errorf("Name = %q, want host", b.Name())
	}
	if f := b.Features(); f != (vmm.Features{Isolation: "namespaces", Acceleration: "none"}) {
		t.Errorf("Features = %+v", f)
	}
}

func TestCloneflags(t *testing.T) {
	base := uintptr(syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC)
	if got := Cloneflags(vmm.Spec{}); got != base|syscall.CLONE_NEWNET {
		t.Errorf("no network: flags %#x, want %#x", got, base|syscall.CLONE_NEWNET)
	}
	if got := Cloneflags(vmm.Spec{Network: true}); got != base {
		t.Errorf("network: flags %#x, want %#x (host network namespace shared)", got, base)
	}
}

func TestArgsRoundTrip(t *testing.T) {
	spec := vmm.Spec{
		Dir: vmdir.Dir("/state/vms/abc, with:odd=chars"), RootDisk: "/envs/rootfs.ext4",
		WorkspaceDisk: "/ws/disk.ext4", Network: true,
	}
	args, err := Args(spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(args) != 3 || args[0] != HiddenArg || args[1] != roleInit {
		t.Fatalf("args = %q", args)
	}
	cfg, err := parseConfig(args[2])
	if err != nil {
		t.Fatal(err)
	}
	want := config{Dir: string(spec.Dir), Rootfs: spec.RootDisk, Workspace: spec.WorkspaceDisk, Network: true, Hostname: "pyro"}
	if cfg != want {
		t.Errorf("config = %+v, want %+v", cfg, want)
	}
	// Rootfs, when set, wins over RootDisk.
	spec.Rootfs = "/other.ext4"
	args, _ = Args(spec)
	if cfg, _ := parseConfig(args[2]); cfg.Rootfs != "/other.ext4" {
		t.Errorf("Rootfs not preferred: %+v", cfg)
	}
}

func TestParseConfigRejects(t *testing.T) {
	for _, s := range []string{"", "{", `{"dir":"/x"}`, `{"rootfs":"/r"}`} {
		if _, err := parseConfig(s); err == nil {
			t.Errorf("parseConfig(%q) succeeded", s)
		}
	}
}

func TestNote(t *testing.T) {
	if Note(vmm.Spec{Network: true}) == Note(vmm.Spec{}) {
		t.Error("Note does not say whether the host network is shared")
	}
}
