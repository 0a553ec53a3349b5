// Package vmm is the seam between pyro and the thing that runs a guest: a
// VMM (QEMU, Firecracker) or the host-compat sandbox. Each backend starts a
// Machine from a Spec; everything above it speaks to the guest agent through
// Machine.DialAgent and never learns which backend it has.
package vmm

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Spec is what a backend needs to start one guest.
type Spec struct {
	ID       string
	Dir      vmdir.Dir
	Kernel   string // uncompressed vmlinux (PVH)
	Initrd   string // initramfs holding the agent as /init
	RootDisk string // read-only ext4 root image
	Rootfs   string // host-compat only: not used by VMMs
	VCPUs    int    // number of vCPUs
	MemMiB   int    // guest memory
	Network  bool   // attach a NIC
	MAC      string // the NIC's MAC address
	// NetworkFile is the VMM's end of a stream socket to pyro's userspace
	// network stack (internal/netstack), which decides every connection:
	// the NIC's frames go there, in QEMU's stream framing. The caller keeps
	// ownership. A backend that cannot attach it refuses a networked spec
	// without it rather than give the guest an unpoliced network (the one
	// exception is the benchmark's slirp reference, see qemu.SlirpEnv).
	NetworkFile *os.File
	// WorkspaceDisk is an ext4 image attached read-write after the root
	// disk (the guest's /dev/vdb, mounted at /workspace); empty for none.
	WorkspaceDisk string
	// WorkspaceBase is a layered workspace's baseline ext4 image, attached
	// read-only after WorkspaceDisk (/dev/vdc); the guest overlays
	// WorkspaceDisk on it at /workspace. Empty for none.
	WorkspaceBase string
	// TransferDisk, with WorkspaceBase, is an image attached read-only
	// after it (/dev/vdd) that the host writes large pushes into for the
	// guest to copy with direct I/O (internal/agent/pushdisk.go). Empty
	// for none.
	TransferDisk string
	// WorkspaceChain, when set, is the upper layer as a chain of images
	// (root first, the writable top last; see internal/workspace/chain.go):
	// the guest's disk is then the top, and WorkspaceDisk only gives its
	// size.
	WorkspaceChain []string
	// Cmdline is the guest kernel command line chosen above the backend
	// (generic words and pyro.* options for the guest init); a backend
	// adds only what its machine needs (its console device, clock hints).
	Cmdline []string
	// Transport is the channel to the guest agent the guest expects
	// (TransportVirtioSerial); a backend that cannot provide it refuses.
	Transport string
	// RestoreState, when not empty, is a state file written by a
	// Snapshotter (guest RAM and device state) for the same device set: the
	// machine continues from it instead of booting the kernel. The VMM gets
	// it only as a read-only descriptor, so no guest's VMM can change what
	// later restores load.
	RestoreState string
	// RestoreLive: RestoreState was written by LiveSaver from a guest
	// whose agent had a host session open; the restore waits until the
	// guest agent let go of that session and reopened its channel, so
	// the new host never talks into the old session.
	RestoreLive bool
	// RestoreFork: RestoreState was written by LiveSaver (a fork), whose
	// guest already saw these very disks at these sizes (copies made at
	// the saved instant). A golden snapshot's guest saw placeholders, so
	// its restore tells the guest to re-read the workspace disk's size;
	// a fork's is spared that (and its kernel the work and log line).
	RestoreFork bool
	// RestoreSameDisks: the saved guest had disks of exactly these sizes
	// (a mounted-workspace snapshot), so the restore need not make it
	// re-read the workspace disk's capacity.
	RestoreSameDisks bool
	// HugePages lets the VMM back guest RAM with transparent huge pages,
	// which pyro otherwise turns off (host memory per guest): a restore
	// reads every page of guest RAM, zero ones too, and each read faults
	// in a 4 KiB zero page without them, 2 MiB with them. Measured here
	// (TCG, debian:12 at 1 GiB): a restore's QEMU used 0.48 s of CPU
	// without, 0.21 s with. Set for forks (vm.ForkBoot), where ten
	// restores at once share the host's cores, and for one-shot runs
	// (vm.Config.OneShot), which live for one command. Golden snapshots
	// no longer carry zero pages (qemu.CompactState), so their restores
	// fault in only the guest's non-zero pages either way.
	HugePages bool
	// RestoreRAM, when set with RestoreState, is a file holding the saved
	// guest's main RAM (RestoreState then lacks it: qemu.SplitRAM): the
	// VMM maps it copy-on-write instead of reading the RAM. It must be
	// unwritable (a sealed memfd): every fork maps the same file.
	RestoreRAM string
	// Hold, when set, is called once a restore has loaded RestoreState
	// with the guest still paused (a state saved from a paused guest,
	// as a fork's is), before the guest continues; the start waits for
	// it. Forks use it to load every fork first and run them together
	// (vm.ForkGate). It must return by itself: a hold that fails only
	// lets the guest continue.
	Hold func(ctx context.Context, m Machine)
	// Logger, when not nil, gets the backend's start steps at debug level
	// (PYRO_LOG=debug: where a start's milliseconds go); nil is silent.
	Logger *slog.Logger
}

// Snapshotter is a Backend that can save a running machine: its RAM and
// device state go to state. release is called once the backend watches the agent channel: it
// must close the caller's agent connection; Save then waits until the
// guest has let go of the channel, so every restored copy starts with no
// agent session open. The machine is paused afterwards; stop it.
type Snapshotter interface {
	Save(ctx context.Context, dir vmdir.Dir, state *os.File, release func()) error
}

// StateCompactor is a Snapshotter that can rewrite a state Save wrote into
// one that restores the same machine with less work. An error means the
// state is not one it knows; the caller then keeps the original.
type StateCompactor interface {
	CompactState(in io.Reader, out io.Writer) error
}

// Agent transports.
const (
	// TransportVirtioSerial: a virtio-serial port named org.pyro.agent,
	// a unix socket on the host (QEMU), or that socket directly
	// (host-compat, whose agent listens on it).
	TransportVirtioSerial = "virtio-serial"
)

// Features says what a backend can do, so callers ask instead of guessing.
type Features struct {
	Isolation    string // "vm" or "namespaces"
	Acceleration string // "kvm", "tcg" or "none"
	// What the backend can enforce. A caller that needs one of these and
	// gets a backend without it refuses (Missing), never degrades silently.
	NetworkPolicy  bool // per-connection egress rules for the guest
	MemorySnapshot bool // save and restore guest RAM
	DiskSnapshot   bool // copy-on-write layers of the guest's disks
	// Transport is the agent channel the backend provides (empty:
	// TransportVirtioSerial).
	Transport string
}

// Needs names what a caller requires of a backend.
type Needs struct {
	NetworkPolicy  bool
	MemorySnapshot bool
	DiskSnapshot   bool
}

// Missing lists (by name) what n asks for and f cannot enforce; empty when
// the backend is enough.
func (f Features) Missing(n Needs) []string {
	var out []string
	if n.NetworkPolicy && !f.NetworkPolicy {
		out = append(out, "network policy")
	}
	if n.MemorySnapshot && !f.MemorySnapshot {
		out = append(out, "memory snapshots")
	}
	if n.DiskSnapshot && !f.DiskSnapshot {
		out = append(out, "disk snapshots")
	}
	return out
}

// Backend starts machines.
type Backend interface {
	Name() string
	Features() Features
	Start(ctx context.Context, spec Spec) (Machine, error)
}

// Machine is one running guest. Every method is safe to call concurrently.
type Machine interface {
	// Pid is the VMM (or sandbox) process id.
	Pid() int
	// DialAgent opens the raw channel to the guest agent, waiting for the
	// VMM to create it; it fails at once if the VMM exits first.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Done is closed when the VMM process has exited; Err then says why.
	Done() <-chan struct{}
	Err() error
	// Stop asks the VMM to exit, then kills it when ctx ends. Idempotent.
	Stop(ctx context.Context) error
}
