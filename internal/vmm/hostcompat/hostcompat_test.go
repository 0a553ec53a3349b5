package hostcompat

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
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

func TestArgsRoundTrip(t *testing.T) {
	spec := vmm.Spec{
		ID: "abc", Dir: vmdir.Dir("/state/vms/abc, with:odd=chars"), RootDisk: "/envs/rootfs.ext4",
		WorkspaceDisk: "/ws/disk.ext4", MemMiB: 512,
	}
	cfg := configFor(spec)
	cfg.Cgroup = []string{"/sys/fs/cgroup/pyro/abc"}
	cfg.IDs = idRange{UIDBase: 100000, GIDBase: 200000, Count: 65536}
	args, err := Args(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(args) != 3 || args[0] != HiddenArg || args[1] != roleInit {
		t.Fatalf("args = %q", args)
	}
	got, err := parseConfig(args[2])
	if err != nil {
		t.Fatal(err)
	}
	if got.Dir != string(spec.Dir) || got.Rootfs != spec.RootDisk || got.Workspace != spec.WorkspaceDisk ||
		got.MemMiB != 512 || got.Hostname != "pyro" || got.IDs != cfg.IDs || len(got.Cgroup) != 1 {
		t.Errorf("config = %+v, want %+v", got, cfg)
	}
	// Rootfs, when set, wins over RootDisk.
	spec.Rootfs = "/other.ext4"
	if c := configFor(spec); c.Rootfs != "/other.ext4" {
		t.Errorf("Rootfs not preferred: %+v", c)
	}
}

func TestSandboxNamespaces(t *testing.T) {
	// The sandbox always gets its own user and network namespaces (and
	// the rest); the init only the mount and PID ones it needs on the
	// host side.
	for _, f := range []uintptr{syscall.CLONE_NEWUSER, syscall.CLONE_NEWNET, syscall.CLONE_NEWNS,
		syscall.CLONE_NEWPID, syscall.CLONE_NEWUTS, syscall.CLONE_NEWIPC, syscall.CLONE_NEWCGROUP} {
		if sandboxCloneflags&f == 0 {
			t.Errorf("sandbox lacks namespace flag %#x", f)
		}
	}
	if Cloneflags&(syscall.CLONE_NEWUSER|syscall.CLONE_NEWNET) != 0 {
		t.Errorf("init flags %#x: the init must stay host root with host network for loop devices", Cloneflags)
	}
}

func TestNetworkRefused(t *testing.T) {
	_, err := New().Start(context.Background(), vmm.Spec{Dir: vmdir.Dir(t.TempDir()), Network: true})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "network") {
		t.Fatalf("Start with a network: %v, want an unavailable error about the network", err)
	}
}

func TestParseConfigRejects(t *testing.T) {
	ok := `"dir":"/x","rootfs":"/r","cgroup":["/c"],"ids":{"uid_base":100000,"gid_base":100000,"count":65536}`
	if _, err := parseConfig("{" + ok + "}"); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, s := range []string{"", "{", `{"dir":"/x"}`, `{"rootfs":"/r"}`,
		`{"dir":"/x","rootfs":"/r","ids":{"uid_base":100000,"gid_base":100000,"count":65536}}`,
		`{"dir":"/x","rootfs":"/r","cgroup":["/c"]}`,
		`{"dir":"/x","rootfs":"/r","cgroup":["/c"],"ids":{"uid_base":0,"gid_base":0,"count":65536}}`} {
		if _, err := parseConfig(s); err == nil {
			t.Errorf("parseConfig(%q) succeeded", s)
		}
	}
}

func TestParseSubordinate(t *testing.T) {
	in := "alice:100000:65536\npyro:0:65536\npyro:300000:65536\n"
	b, n, ok := parseSubordinate(strings.NewReader(in), "pyro")
	if !ok || b != 300000 || n != 65536 {
		t.Errorf("got %d %d %v, want the first range not starting at host id 0", b, n, ok)
	}
	if _, _, ok := parseSubordinate(strings.NewReader(in), "bob"); ok {
		t.Error("found a range for a user without one")
	}
}

// TestSandboxIDsAvoidOtherUsersRanges: without a "pyro" entry the sandbox
// ids must not be another user's subordinate ids (adduser gives the first
// user 100000:65536): that user's rootless containers run as the same host
// uid and could read the sandbox's /proc/PID/environ and /proc/PID/root.
func TestSandboxIDsAvoidOtherUsersRanges(t *testing.T) {
	sub := "alice:100000:65536\nbob:165536:65536\n1003:300000:10\n"
	r := sandboxIDsFrom(sub, sub)
	for _, base := range []uint32{r.UIDBase, r.GIDBase} {
		lo, hi := uint64(base), uint64(base)+uint64(r.Count)
		for _, rg := range [][2]uint64{{100000, 165536}, {165536, 231072}, {300000, 300010}} {
			if lo < rg[1] && rg[0] < hi {
				t.Errorf("sandbox ids %d..%d overlap another user's %d..%d", lo, hi-1, rg[0], rg[1]-1)
			}
		}
		if base == 0 {
			t.Error("base 0")
		}
	}
	if r := sandboxIDsFrom("pyro:500000:65536\n", ""); r.UIDBase != 500000 || r.GIDBase != defaultIDBase {
		t.Errorf("pyro entry: got %+v", r)
	}
}
