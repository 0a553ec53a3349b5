package vm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

// Two backends registered for these tests, ahead of the real ones: one
// never usable, one usable while testOK is true.
var testOK atomic.Bool

func init() {
	vmm.Register(vmm.Registration{Name: "test-unusable", Priority: 1, Probe: func(context.Context, vmm.ProbeInput) (vmm.Probed, error) {
		return vmm.Probed{}, &vmm.Unusable{Reason: "test-unusable cannot run", Hint: "none"}
	}})
	vmm.Register(vmm.Registration{Name: "test-ok", Priority: 2, Probe: func(context.Context, vmm.ProbeInput) (vmm.Probed, error) {
		if !testOK.Load() {
			return vmm.Probed{}, errors.New("test-ok switched off")
		}
		return vmm.Probed{Backend: fakevmm.New(vmm.Features{}), Note: "test-ok note"}, nil
	}})
}

func deps(t *testing.T) vm.Deps {
	return vm.Deps{Dirs: statedir.Dirs{Root: t.TempDir()}}
}

var cfg = vm.Config{Environment: "debian:12", VCPUs: 1, MemMiB: 256}

func fakeSteps() vm.Steps { return fakevmm.Steps(fakevmm.New(vmm.Features{NetworkPolicy: true})) }

func TestBootRunsTheAgentAndCleansUp(t *testing.T) {
	d := deps(t)
	v, err := vm.BootWith(context.Background(), fakeSteps(), d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if v.Backend != fakevmm.Name || v.Health.AgentVersion != "fake" || v.ID == "" || v.Machine == nil || v.BootMS < 0 {
		t.Fatalf("booted: %+v", v)
	}
	if !strings.HasPrefix(string(v.Dir), d.Dirs.VMs()) {
		t.Fatalf("dir %s not under %s", v.Dir, d.Dirs.VMs())
	}
	res, err := v.Agent.Exec(context.Background(), agentapi.ExecRequest{Argv: []string{"sh", "-c", "echo $((6*7))"}, TimeoutMS: 5000}, nil)
	if err != nil || res.Stdout != "42\n" {
		t.Fatalf("exec: %+v %v", res, err)
	}
	var order []string
	v.OnClose(func(context.Context) error { order = append(order, "first"); return nil })
	v.OnClose(func(context.Context) error { order = append(order, "second"); return errors.New("second failed") })
	err = v.Close(context.Background())
	if err == nil || !strings.Contains(err.Error(), "second failed") {
		t.Fatalf("close error: %v", err)
	}
	if len(order) != 2 || order[0] != "second" {
		t.Fatalf("cleanups not LIFO: %v", order)
	}
	if again := v.Close(context.Background()); again == nil || again.Error() != err.Error() {
		t.Fatalf("second close: %v", again)
	}
	select {
	case <-v.Machine.Done():
	default:
		t.Fatal("machine still running after close")
	}
	if _, err := os.Stat(string(v.Dir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a directory Boot made is left after Close")
	}
}

// A directory the caller owns stays after Close.
func TestBootInCallersDirectory(t *testing.T) {
	d := deps(t)
	dir := vmdir.Dir(filepath.Join(t.TempDir(), "own"))
	dir.Create()
	c := cfg
	c.ID, c.Dir = "own", dir
	v, err := vm.BootWith(context.Background(), fakeSteps(), d, c)
	if err != nil {
		t.Fatal(err)
	}
	v.Close(context.Background())
	if _, err := os.Stat(string(dir)); err != nil {
		t.Fatal("caller's directory removed")
	}
	if boots, _ := fakevmm.Boots(dir); len(boots) != 1 {
		t.Fatalf("boots: %v", boots)
	}
}

func TestStepsAreSwappable(t *testing.T) {
	s := vm.ColdBoot()
	want := []string{vm.StepResolveEnvironment, vm.StepPrepareDirectory, vm.StepBuildInitramfs, vm.StepChooseBackend, vm.StepCheckFeatures, vm.StepStartNetwork, vm.StepAwaitBaseCold, vm.StepStartVMM, vm.StepConnectAgent}
	if strings.Join(s.Names(), ",") != strings.Join(want, ",") {
		t.Fatalf("cold boot: %v", s.Names())
	}
	r := s.Remove(vm.StepBuildInitramfs).InsertAfter(vm.StepStartVMM, vm.Step{Name: "extra"})
	if got := strings.Join(r.Names(), ","); got != "resolve environment,prepare directory,choose backend,check features,start network,"+vm.StepAwaitBaseCold+",start vmm,extra,connect agent" {
		t.Fatalf("edited: %s", got)
	}
	if len(s.Names()) != 9 {
		t.Fatal("editing a copy changed the original")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("swapping a missing step did not panic")
		}
	}()
	s.Swap("no such step", nil)
}

// A failing step tears down what earlier steps set up.
func TestFailedStepCleansUp(t *testing.T) {
	d := deps(t)
	var machine vmm.Machine
	steps := fakeSteps().InsertAfter(vm.StepStartVMM, vm.Step{Name: "fail", Run: func(_ context.Context, _ vm.Deps, _ vm.Config, v *vm.VM) error {
		machine = v.Machine
		return errors.New("step failed")
	}})
	_, err := vm.BootWith(context.Background(), steps, d, cfg)
	if err == nil || !strings.Contains(err.Error(), "step failed") {
		t.Fatalf("boot: %v", err)
	}
	select {
	case <-machine.Done():
	default:
		t.Fatal("machine left running")
	}
	if ents, _ := os.ReadDir(d.Dirs.VMs()); len(ents) != 0 {
		t.Fatalf("left: %v", ents)
	}
	// A cancelled boot says which step it was in.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	steps = fakeSteps().Swap(vm.StepResolveEnvironment, func(ctx context.Context, _ vm.Deps, _ vm.Config, _ *vm.VM) error { return ctx.Err() })
	if _, err := vm.BootWith(ctx, steps, d, cfg); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), vm.StepResolveEnvironment) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestAgentNeverAnswers(t *testing.T) {
	d := deps(t)
	dir := vmdir.Dir(filepath.Join(t.TempDir(), "x"))
	dir.Create()
	os.WriteFile(dir.Path(fakevmm.NoAgent), nil, 0o600)
	c := cfg
	c.ID, c.Dir, c.BootTimeout = "x", dir, 300*time.Millisecond
	_, err := vm.BootWith(context.Background(), fakeSteps(), d, c)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "did not answer within") {
		t.Fatalf("boot: %v", err)
	}
}

func TestGuestExitsDuringBoot(t *testing.T) {
	d := deps(t)
	dir := vmdir.Dir(filepath.Join(t.TempDir(), "x"))
	dir.Create()
	os.WriteFile(dir.Path(fakevmm.NoAgent), nil, 0o600)
	os.WriteFile(dir.Path(vmdir.ConsoleLog), []byte("kernel panic: test"), 0o600)
	c := cfg
	c.ID, c.Dir = "x", dir
	steps := fakeSteps().InsertAfter(vm.StepStartVMM, vm.Step{Name: "crash", Run: func(_ context.Context, _ vm.Deps, _ vm.Config, v *vm.VM) error {
		return fakevmm.Crash(v.Dir)
	}})
	_, err := vm.BootWith(context.Background(), steps, d, c)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "guest exited during boot") || !strings.Contains(err.Error(), "kernel panic: test") {
		t.Fatalf("boot: %v", err)
	}
}

func TestStartFailure(t *testing.T) {
	d := deps(t)
	dir := vmdir.Dir(filepath.Join(t.TempDir(), "x"))
	dir.Create()
	os.WriteFile(dir.Path(fakevmm.FailFile), nil, 0o600)
	c := cfg
	c.ID, c.Dir = "x", dir
	if _, err := vm.BootWith(context.Background(), fakeSteps(), d, c); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("boot: %v", err)
	}
}

// chooseOnly runs the steps up to the backend choice and its feature check.
func chooseOnly() vm.Steps {
	noop := func(context.Context, vm.Deps, vm.Config, *vm.VM) error { return nil }
	return vm.ColdBoot().Swap(vm.StepResolveEnvironment, noop).Swap(vm.StepBuildInitramfs, noop).
		Remove(vm.StepStartVMM).Remove(vm.StepConnectAgent)
}

func TestChooseBackendFromRegistry(t *testing.T) {
	d := deps(t)
	t.Setenv("PYRO_QEMU", "/nonexistent/qemu")
	t.Setenv("PYRO_BACKEND", "")

	// The first usable backend in priority order wins; the note says why
	// the ones before it were passed over.
	testOK.Store(true)
	v, err := vm.BootWith(context.Background(), chooseOnly(), d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if v.Backend != fakevmm.Name || !strings.Contains(v.AccelNote, "test-unusable cannot run") || !strings.Contains(v.AccelNote, "test-ok note") {
		t.Fatalf("chose %q: %q", v.Backend, v.AccelNote)
	}
	v.Close(context.Background())

	// None usable and no fallback allowed: unavailable, every reason named.
	testOK.Store(false)
	_, err = vm.BootWith(context.Background(), chooseOnly(), d, cfg)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "no guest can boot on this host") ||
		!strings.Contains(err.Error(), "test-unusable cannot run") || !strings.Contains(err.Error(), "qemu not found") ||
		!strings.Contains(err.Error(), "--allow-host-compat") || strings.Count(err.Error(), "(hint:") != 1 {
		t.Fatalf("none usable: %v", err)
	}

	// With the fallback allowed, host-compat is taken, with the reasons.
	c := cfg
	c.AllowHostCompat = true
	v, err = vm.BootWith(context.Background(), chooseOnly(), d, c)
	if err != nil {
		t.Fatal(err)
	}
	if v.Backend != "host" || v.Features.Isolation != "namespaces" || !strings.Contains(v.AccelNote, "qemu not found") || !strings.Contains(v.AccelNote, "Linux namespaces") {
		t.Fatalf("fallback %q: %q", v.Backend, v.AccelNote)
	}
	v.Close(context.Background())

	// A backend named by PYRO_BACKEND is used as is; the weaker one only
	// when allowed.
	t.Setenv("PYRO_BACKEND", "fake")
	v, err = vm.BootWith(context.Background(), chooseOnly(), d, cfg)
	if err != nil || v.Backend != fakevmm.Name {
		t.Fatalf("PYRO_BACKEND=fake: %v %+v", err, v)
	}
	v.Close(context.Background())
	t.Setenv("PYRO_BACKEND", "host")
	v, err = vm.BootWith(context.Background(), chooseOnly(), d, c)
	if err != nil || v.Backend != "host" || !strings.Contains(v.AccelNote, "PYRO_BACKEND=host") {
		t.Fatalf("PYRO_BACKEND=host: %v %+v", err, v)
	}
	v.Close(context.Background())
	c.Backend = "test-unusable"
	if _, err := vm.BootWith(context.Background(), chooseOnly(), d, c); !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "test-unusable") {
		t.Fatalf("named unusable backend: %v", err)
	}
}

// A backend that cannot enforce what the caller needs is refused clearly.
func TestFeaturesRefused(t *testing.T) {
	d := deps(t)
	c := cfg
	c.Needs = vmm.Needs{NetworkPolicy: true, MemorySnapshot: true}
	_, err := vm.BootWith(context.Background(), fakevmm.Steps(fakevmm.New(vmm.Features{})), d, c)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "network policy, memory snapshots") {
		t.Fatalf("boot: %v", err)
	}
	v, err := vm.BootWith(context.Background(), fakevmm.Steps(fakevmm.New(vmm.Features{NetworkPolicy: true, MemorySnapshot: true})), d, c)
	if err != nil {
		t.Fatal(err)
	}
	v.Close(context.Background())
	if m := (vmm.Features{}).Missing(vmm.Needs{DiskSnapshot: true}); len(m) != 1 || m[0] != "disk snapshots" {
		t.Fatalf("missing: %v", m)
	}
	// A backend with another agent transport than the guest expects.
	_, err = vm.BootWith(context.Background(), fakevmm.Steps(fakevmm.New(vmm.Features{Transport: "vsock"})), d, cfg)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "vsock") {
		t.Fatalf("transport: %v", err)
	}
}

// The guest's kernel command line is chosen above the backend and reaches
// it whole.
func TestGuestCmdline(t *testing.T) {
	d := deps(t)
	c := cfg
	c.Network = true
	c.WorkspaceDisk = filepath.Join(t.TempDir(), "disk")
	os.WriteFile(c.WorkspaceDisk, []byte("disk"), 0o600)
	v, err := vm.BootWith(context.Background(), fakeSteps(), d, c)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(context.Background())
	boots, _ := fakevmm.Boots(v.Dir)
	got := strings.Join(boots[0].Cmdline, " ")
	if !strings.Contains(got, "pyro.net=1") || !strings.Contains(got, "pyro.workspace=1") || !strings.Contains(got, "panic=-1") {
		t.Fatalf("cmdline %q", got)
	}
	// The NIC is attached to the guest's network stack, never unpoliced.
	if !boots[0].NetworkFile || v.Net == nil || v.Net.Policy().Mode != netpolicy.Egress {
		t.Fatalf("network: file %v, stack %v", boots[0].NetworkFile, v.Net)
	}
	if got := strings.Join(vm.GuestCmdline(cfg), " "); strings.Contains(got, "pyro.") {
		t.Fatalf("bare cmdline %q", got)
	}
}

func TestDefaultStepsValidate(t *testing.T) {
	d := deps(t)
	if _, err := vm.Boot(context.Background(), d, vm.Config{Environment: "debian:12", VCPUs: 0, MemMiB: 256}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("vcpus 0: %v", err)
	}
	if err := vm.ValidateResources(1, 64); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("mem 64: %v", err)
	}
	if _, err := vm.Boot(context.Background(), d, vm.Config{Environment: "nosuch:1", VCPUs: 1, MemMiB: 256}); err == nil {
		t.Fatal("unknown environment booted")
	}
	if m := vm.MAC("abc"); m != vm.MAC("abc") || !strings.HasPrefix(m, "52:54:00:") || len(m) != 17 {
		t.Fatalf("mac %q", m)
	}
}

// A backend that cannot police a network gets no networked guest.
func TestNetworkNeedsPolicyBackend(t *testing.T) {
	d := deps(t)
	c := cfg
	c.Network = true
	_, err := vm.BootWith(context.Background(), fakevmm.Steps(fakevmm.New(vmm.Features{})), d, c)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "network policy") {
		t.Fatalf("networked boot on a backend without NetworkPolicy: %v", err)
	}
}

// The benchmark's slirp reference never stands in for a policy that
// promises more than open egress.
func TestSlirpBenchRefusesPolicies(t *testing.T) {
	t.Setenv("PYRO_BENCH_SLIRP", "1")
	d := deps(t)
	c := cfg
	c.Network = true
	c.NetworkPolicy = netpolicy.Policy{Mode: netpolicy.Egress, AllowHosts: []string{"pypi.org"}}
	_, err := vm.BootWith(context.Background(), fakeSteps(), d, c)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "PYRO_BENCH_SLIRP") {
		t.Fatalf("slirp with an allowlist: %v", err)
	}
}

// TCG guests get fixed mappings (norandmaps, tcg.go): every exec then
// reuses what TCG translated for the previous one. KVM guests keep
// address-space randomization. TCG guests also trust their TSC
// (tsc=reliable): a restored guest's tick-counting watchdog otherwise
// switches it to refined-jiffies. And they leave out LSMs and PSI
// accounting, code each restored guest would translate for nothing.
func TestTCGGuestsHaveFixedMappings(t *testing.T) {
	for accel, want := range map[string]bool{"tcg": true, "kvm": false} {
		d := deps(t)
		v, err := vm.BootWith(context.Background(), fakevmm.Steps(fakevmm.New(vmm.Features{Acceleration: accel})), d, cfg)
		if err != nil {
			t.Fatal(err)
		}
		boots, _ := fakevmm.Boots(v.Dir)
		v.Close(context.Background())
		for _, word := range []string{"norandmaps", "tsc=reliable", "lsm=landlock,lockdown,yama,bpf", "psi=0"} {
			if got := slices.Contains(boots[0].Cmdline, word); got != want {
				t.Errorf("%s guest: %s %v, want %v (cmdline %q)", accel, word, got, want, boots[0].Cmdline)
			}
		}
	}
}

// Only a one-shot guest's RAM may use huge pages (qemu/hugepages.go): a
// guest that waits idle would hold more memory for them.
func TestOneShotGuestsUseHugePages(t *testing.T) {
	for _, oneShot := range []bool{true, false} {
		d := deps(t)
		c := cfg
		c.OneShot = oneShot
		v, err := vm.BootWith(context.Background(), fakeSteps(), d, c)
		if err != nil {
			t.Fatal(err)
		}
		boots, _ := fakevmm.Boots(v.Dir)
		v.Close(context.Background())
		if boots[0].HugePages != oneShot {
			t.Errorf("one-shot %v: spec huge pages %v", oneShot, boots[0].HugePages)
		}
	}
}
