// Package fakevmm is a vmm.Backend for tests: its Machine runs no VMM but
// serves the real guest agent (internal/agent) in memory over a socket pair, so
// boot, supervisor and lifecycle code runs unchanged and fast, without a
// VM. Commands "in the guest" run on the host as the test's user.
//
// Only test binaries import this package; importing it registers the
// backend "fake", which is never chosen automatically (only by name:
// PYRO_BACKEND=fake or vm.Config.Backend).
//
// A test steers a running fake machine, also one owned by a supervisor in
// another process, through control files in its VM directory: Freeze
// makes the agent stop answering (bytes are held, not lost) until Thaw,
// Crash makes the "VMM" exit with an error. Every start appends a line to
// the directory's boot log (Boots) naming the workspace disk's content, so
// a test can tell which disk a guest booted on.
package fakevmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/agent"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// Name is the backend's registered name.
const Name = "fake"

// Control and log files in a fake machine's VM directory.
const (
	FreezeFile = "fake.freeze"
	CrashFile  = "fake.crash"
	FailFile   = "fake.fail-start" // present at start: Start fails
	NoAgent    = "fake.no-agent"   // present at start: the agent never answers
	BootLog    = "fake.boots.jsonl"
	// WorkspaceDir stands in for the guest's /workspace.
	WorkspaceDir = "fake-workspace"
)

func init() {
	vmm.Register(vmm.Registration{Name: Name, Priority: 1000, Explicit: true,
		Probe: func(context.Context, vmm.ProbeInput) (vmm.Probed, error) {
			// It attaches a NIC to the network stack as QEMU does.
			return vmm.Probed{Backend: New(vmm.Features{NetworkPolicy: true}), Note: "fake backend (tests)"}, nil
		}})
}

// Backend starts fake machines.
type Backend struct {
	features vmm.Features
}

var _ vmm.Backend = (*Backend)(nil)

// New returns a fake backend that claims the given enforcement features;
// isolation is "vm" and acceleration f's, else "none".
func New(f vmm.Features) *Backend {
	f.Isolation = "vm"
	if f.Acceleration == "" {
		f.Acceleration = "none"
	}
	return &Backend{features: f}
}

func (b *Backend) Name() string           { return Name }
func (b *Backend) Features() vmm.Features { return b.features }

// Boot is one line of a VM directory's boot log.
type Boot struct {
	At            time.Time `json:"at"`
	WorkspaceDisk string    `json:"workspace_disk,omitempty"` // the disk's content (tests write short markers)
	Cmdline       []string  `json:"cmdline,omitempty"`
	// NetworkFile: the spec carried the network stack's socket.
	NetworkFile bool `json:"network_file,omitempty"`
	// HugePages: the spec let guest RAM use huge pages (one-shot runs).
	HugePages bool `json:"huge_pages,omitempty"`
}

// Start "boots" a machine for spec.
func (b *Backend) Start(startCtx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if spec.Dir == "" {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "", "fake: no VM directory")
	}
	if exists(spec.Dir.Path(FailFile)) {
		return nil, errdefs.New(errdefs.ErrUnavailable, "remove "+FailFile, "fake vmm refused to start")
	}
	// A fresh machine starts neither frozen nor crashed.
	_ = os.Remove(spec.Dir.Path(FreezeFile))
	_ = os.Remove(spec.Dir.Path(CrashFile))
	if spec.Network && spec.NetworkFile == nil {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "", "fake: a networked spec without the network stack's socket")
	}
	boot := Boot{At: time.Now().UTC(), Cmdline: spec.Cmdline, NetworkFile: spec.NetworkFile != nil, HugePages: spec.HugePages}
	if spec.WorkspaceDisk != "" {
		data, err := os.ReadFile(spec.WorkspaceDisk)
		if err != nil {
			return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "", "fake: workspace disk")
		}
		if len(data) > 256 {
			data = data[:256]
		}
		boot.WorkspaceDisk = string(data)
	}
	if err := appendJSON(spec.Dir.Path(BootLog), boot); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Machine{spec: spec, done: make(chan struct{}), ctx: ctx, cancel: cancel, noAgent: exists(spec.Dir.Path(NoAgent))}
	// One agent per machine, as one per guest: services, shells and
	// secrets outlive each connection.
	ws := spec.Dir.Path(WorkspaceDir)
	if err := os.MkdirAll(ws, 0o700); err != nil {
		cancel()
		return nil, err
	}
	m.agent = agent.New(agent.Options{
		Shutdown:     func() { m.exit(nil) },
		SecretsDir:   spec.Dir.Path("fake-secrets"),
		WorkspaceDir: ws,
		Version:      "fake",
	})
	go m.watch()
	if spec.RestoreState != "" && spec.Hold != nil {
		spec.Hold(startCtx, m) // "loaded", its guest not yet running
	}
	return m, nil
}

// Machine is a running fake guest.
type Machine struct {
	spec    vmm.Spec
	noAgent bool
	agent   *agent.Agent
	ctx     context.Context
	cancel  context.CancelFunc
	once    sync.Once
	done    chan struct{}
	err     error
}

var _ vmm.Machine = (*Machine)(nil)

// Pid is the process that serves the agent: this one.
func (m *Machine) Pid() int { return os.Getpid() }

func (m *Machine) Done() <-chan struct{} { return m.done }

func (m *Machine) Err() error {
	select {
	case <-m.done:
		return m.err
	default:
		return nil
	}
}

// exit ends the machine once, with err as its exit error.
func (m *Machine) exit(err error) {
	m.once.Do(func() {
		m.err = err
		m.cancel()
		close(m.done)
	})
}

// Stop ends the machine. Idempotent.
func (m *Machine) Stop(context.Context) error {
	m.exit(nil)
	return nil
}

// watch turns a crash control file into an exit.
func (m *Machine) watch() {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-tick.C:
			if exists(m.spec.Dir.Path(CrashFile)) {
				m.exit(errors.New("fake vmm crashed"))
				return
			}
		}
	}
}

// DialAgent opens an in-memory channel to a fresh session of the real
// agent server.
func (m *Machine) DialAgent(ctx context.Context) (net.Conn, error) {
	select {
	case <-m.done:
		return nil, errdefs.New(errdefs.ErrUnavailable, "", "fake vmm exited")
	case <-ctx.Done():
		return nil, ctx.Err()
	default:
	}
	host, guest, err := socketPair()
	if err != nil {
		return nil, err
	}
	if m.noAgent {
		// Like a VMM whose socket exists but whose guest never answers.
		go func() {
			<-m.done
			_ = guest.Close()
			_ = host.Close()
		}()
		return host, nil
	}
	go func() {
		_ = m.agent.Serve(m.ctx, &gate{Conn: guest, m: m})
	}()
	// The host end dies with the machine, as a VMM's socket would.
	go func() {
		<-m.done
		_ = host.Close()
	}()
	return host, nil
}

// socketPair is an in-memory channel like a VMM's chardev socket: unlike
// net.Pipe it buffers in the kernel, so a small write to a guest that is
// not reading (frozen) does not block, as with a real VMM.
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	conn := func(fd int, name string) (net.Conn, error) {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		return net.FileConn(f)
	}
	host, err := conn(fds[0], "fake-agent-host")
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	guest, err := conn(fds[1], "fake-agent-guest")
	if err != nil {
		host.Close()
		return nil, nil, err
	}
	return host, guest, nil
}

// gate holds the guest side's reads and writes while the freeze file
// exists: a guest that stops answering without closing anything.
type gate struct {
	net.Conn
	m *Machine
}

func (g *gate) wait() error {
	for exists(g.m.spec.Dir.Path(FreezeFile)) {
		select {
		case <-g.m.done:
			return net.ErrClosed
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func (g *gate) Read(p []byte) (int, error) {
	n, err := g.Conn.Read(p)
	if werr := g.wait(); werr != nil {
		return 0, werr
	}
	return n, err
}

func (g *gate) Write(p []byte) (int, error) {
	if err := g.wait(); err != nil {
		return 0, err
	}
	return g.Conn.Write(p)
}

// Steps are the cold-boot steps with the parts a fake guest does not need
// (an installed environment, an initramfs) left out, and backend b.
func Steps(b *Backend) vm.Steps {
	noop := func(context.Context, vm.Deps, vm.Config, *vm.VM) error { return nil }
	return vm.ColdBoot().
		Swap(vm.StepResolveEnvironment, noop).
		Swap(vm.StepBuildInitramfs, noop).
		Swap(vm.StepChooseBackend, func(_ context.Context, _ vm.Deps, _ vm.Config, v *vm.VM) error {
			v.Use(b, "fake backend (tests)")
			return nil
		})
}

// Freeze makes the fake guest in dir stop answering; Thaw undoes it.
func Freeze(dir vmdir.Dir) error { return os.WriteFile(dir.Path(FreezeFile), nil, 0o600) }

// Thaw lets a frozen fake guest answer again.
func Thaw(dir vmdir.Dir) error { return os.Remove(dir.Path(FreezeFile)) }

// Crash makes the fake VMM in dir exit with an error (within ~10 ms).
func Crash(dir vmdir.Dir) error { return os.WriteFile(dir.Path(CrashFile), nil, 0o600) }

// Boots reads dir's boot log.
func Boots(dir vmdir.Dir) ([]Boot, error) {
	f, err := os.Open(dir.Path(BootLog))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Boot
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var b Boot
		if err := json.Unmarshal(sc.Bytes(), &b); err != nil {
			return out, err
		}
		out = append(out, b)
	}
	return out, sc.Err()
}

func appendJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return fsutil.AppendLine(path, b)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
