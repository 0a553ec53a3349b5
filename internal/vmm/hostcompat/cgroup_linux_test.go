package hostcompat

import (
	"os"
	"path/filepath"
	"testing"
)

// fakeCgroupRoot points cgroupRoot at a directory laid out like a cgroup
// mount (plain files stand in for the knobs).
func fakeCgroupRoot(t *testing.T, files ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, f := range files {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := cgroupRoot
	cgroupRoot = root
	t.Cleanup(func() { cgroupRoot = old })
	return root
}

func readKnob(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCgroupV2Limits(t *testing.T) {
	root := fakeCgroupRoot(t, "cgroup.controllers", "cgroup.subtree_control", "pyro/cgroup.subtree_control")
	cg, err := createCgroup("vm1", limits{MemMiB: 256, VCPUs: 2, Pids: 1024})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "pyro", "vm1")
	if !cg.V2 || len(cg.Dirs) != 1 || cg.Dirs[0] != dir {
		t.Fatalf("cgroup = %+v", cg)
	}
	for f, want := range map[string]string{
		"memory.max": "268435456", "pids.max": "1024", "cpu.max": "200000 100000",
	} {
		if got := readKnob(t, filepath.Join(dir, f)); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
	// A knob the kernel lacks (no swap accounting here) is skipped, not made.
	if _, err := os.Stat(filepath.Join(dir, "memory.swap.max")); err == nil {
		t.Error("memory.swap.max was created")
	}
	for _, d := range []string{root, filepath.Join(root, "pyro")} {
		if got := readKnob(t, filepath.Join(d, "cgroup.subtree_control")); got != "+memory +pids +cpu" {
			t.Errorf("%s: controllers %q", d, got)
		}
	}
}

func TestCgroupV1Limits(t *testing.T) {
	root := fakeCgroupRoot(t, "memory/cgroup.procs", "pids/cgroup.procs", "cpu/cgroup.procs")
	cg, err := createCgroup("vm2", limits{MemMiB: 512, VCPUs: 1, Pids: 100})
	if err != nil {
		t.Fatal(err)
	}
	if cg.V2 || len(cg.Dirs) != 3 {
		t.Fatalf("cgroup = %+v", cg)
	}
	for f, want := range map[string]string{
		"memory/pyro/vm2/memory.limit_in_bytes": "536870912", "pids/pyro/vm2/pids.max": "100",
		"cpu/pyro/vm2/cpu.cfs_quota_us": "100000", "cpu/pyro/vm2/cpu.cfs_period_us": "100000",
	} {
		if got := readKnob(t, filepath.Join(root, f)); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
}

func TestCgroupRefuses(t *testing.T) {
	fakeCgroupRoot(t) // neither v2 nor v1 controllers
	if _, err := createCgroup("vm3", limits{MemMiB: 1, VCPUs: 1, Pids: 1}); err == nil {
		t.Error("created a cgroup without any controllers")
	}
	fakeCgroupRoot(t, "cgroup.controllers", "cgroup.subtree_control", "pyro/cgroup.subtree_control")
	for _, id := range []string{"", "../escape", "a/b", ".hidden"} {
		if _, err := createCgroup(id, limits{MemMiB: 1, VCPUs: 1, Pids: 1}); err == nil {
			t.Errorf("accepted cgroup name %q", id)
		}
	}
	if _, err := createCgroup("ok", limits{MemMiB: 0, VCPUs: 1, Pids: 1}); err == nil {
		t.Error("accepted an unlimited memory")
	}
}
