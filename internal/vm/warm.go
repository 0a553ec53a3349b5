package vm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/golden"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// Warm start (issue #14): a guest restored from a golden memory snapshot
// instead of booted. WarmBoot is ColdBoot with three steps swapped or
// added, not branches inside them:
//
//	find snapshot     (after check features) look up the snapshot for this
//	                  configuration, building it on first use
//	start vmm         restore from it when there is one, else boot
//	connect agent     a restored agent answers at once: a short deadline
//	refresh identity  (after connect agent) new RNG state, clock, hostname,
//	                  machine-id, MAC; then the workspace disk is mounted
//
// Devices that differ per guest exist in the snapshot too, because QEMU's
// microvm cannot hot-plug: the snapshot's guest had the same device set
// with a placeholder workspace disk (which it probed but never mounted,
// pyro.workspace=defer), a NIC of the same class, and an agent port with no
// host connected. A restored guest gets its own disk opened by QEMU at
// restore time; the agent drops every cached block of it before mounting.

// Start modes reported in results.
const (
	StartWarm = "warm"
	StartCold = "cold"
)

// Names of the warm-boot steps.
const (
	StepFindSnapshot    = "find snapshot"
	StepRefreshIdentity = "refresh identity"
)

// basePlaceholderBytes is the size of a layered workspace's baseline
// placeholder in a snapshot (sparse; never read).
const basePlaceholderBytes = 1 << 40

// WarmEnv set to "0" makes every start cold.
const WarmEnv = "PYRO_WARM"

// restoreAgentTimeout bounds each wait of a fork for its restored
// guest's agent (fork.go).
const restoreAgentTimeout = 30 * time.Second

// warmState is a VM's part in a warm boot.
type warmState struct {
	// snapshotCmdline: the kernel line of a guest that may be snapshotted
	// or was restored (the same line, or the same machine it is not).
	snapshotCmdline bool
	snapshot        *golden.Snapshot
	state           string
	// mounted: the snapshot's guest has /workspace mounted
	// (warm_mounted.go).
	mounted bool
	// diskSynced reports the sync of a mounted restore's upper disk.
	diskSynced chan error
}

// warmFailure marks a failed restore: Boot then boots cold.
type warmFailure struct{ err error }

func (w *warmFailure) Error() string { return w.err.Error() }
func (w *warmFailure) Unwrap() error { return w.err }

func warmWanted(c Config) bool { return !c.Cold && os.Getenv(WarmEnv) != "0" }

// WarmBoot returns the steps that restore a guest from its golden memory
// snapshot, or boot it when there is none.
func WarmBoot() Steps {
	return ColdBoot().
		InsertAfter(StepCheckFeatures, Step{StepFindSnapshot, findSnapshot}).
		Swap(StepStartVMM, startOrRestore).
		Swap(StepConnectAgent, connectRestored).
		InsertAfter(StepConnectAgent, Step{StepAwaitBase, awaitBase}).
		InsertAfter(StepAwaitBase, Step{StepRefreshIdentity, refreshIdentity})
}

// cmdline is GuestCmdline (and the words of TCG guests, tcg.go), or for a guest that may be saved (and every
// guest restored from it) the snapshot variant: the workspace disk is
// only waited for, not mounted, and the agent reconnects to a new host at
// once.
func (v *VM) cmdline(c Config) []string {
	words := append(GuestCmdline(c), tcgWords(v.Features.Acceleration)...)
	if !v.warm.snapshotCmdline {
		// A cold guest's hostname is the one a restored guest of its id
		// gets (refreshIdentity): its own, not the image's "pyro".
		return append(words, "pyro.hostname="+Hostname(v.ID))
	}
	if v.warm.mounted {
		return append(words, "pyro.snapshot=1", "init_on_free=1")
	}
	if i := slices.Index(words, "pyro.workspace=1"); i >= 0 {
		words[i] = "pyro.workspace=defer"
	}
	if i := slices.Index(words, "pyro.workspace=2"); i >= 0 {
		words[i] = "pyro.workspace=defer2" // layered
	}
	// init_on_free: memory the guest freed before the save (the unpacked
	// initramfs image, boot-time buffers) is zero, so it is neither in the
	// snapshot nor in any restored guest's host memory.
	return append(words, "pyro.snapshot=1", "init_on_free=1")
}

// snapshotBackend is what a backend needs for warm starts.
type snapshotBackend interface {
	vmm.Snapshotter
	SnapshotIdentity() string
}

// SnapshotKey is the golden snapshot key of a VM about to start (after
// the backend was chosen).
func (v *VM) snapshotKey(c Config) (golden.Key, bool) { return v.snapshotKeyFor(c, false) }

// snapshotKeyFor is snapshotKey of the snapshot whose guest has /workspace
// mounted (mounted) or only probed (warm_mounted.go).
func (v *VM) snapshotKeyFor(c Config, mounted bool) (golden.Key, bool) {
	sb, ok := v.backend.(snapshotBackend)
	if !ok || !v.Features.MemorySnapshot {
		return golden.Key{}, false
	}
	network := "off"
	if c.Network {
		network = "user"
	}
	saved, savedMounted := v.warm.snapshotCmdline, v.warm.mounted
	v.warm.snapshotCmdline, v.warm.mounted = true, mounted
	cmdline := strings.Join(v.cmdline(c), " ")
	v.warm.snapshotCmdline, v.warm.mounted = saved, savedMounted
	return golden.Key{
		Format:      golden.Format,
		Environment: v.Environment.Manifest.Name, EnvDigest: v.Environment.Manifest.Digest,
		VCPUs: c.VCPUs, MemMiB: c.MemMiB, Network: network, Workspace: c.WorkspaceDisk != "",
		Backend: v.Backend, VMM: sb.SnapshotIdentity(), Cmdline: cmdline,
		Initramfs:        strings.TrimSuffix(filepath.Base(v.initrd), filepath.Ext(v.initrd)),
		MountedWorkspace: mounted,
	}, true
}

// SnapshotStore is the golden snapshot store of an installed environment.
func SnapshotStore(envDir string) *golden.Store {
	return golden.New(filepath.Join(envDir, golden.DirName))
}

func findSnapshot(ctx context.Context, d Deps, c Config, v *VM) error {
	if freshWorkspace(c) {
		if ok, err := findMounted(ctx, d, c, v); ok || err != nil {
			return err
		}
	}
	key, ok := v.snapshotKey(c)
	if !ok {
		v.SnapshotNote = fmt.Sprintf("backend %q cannot restore memory snapshots", v.Backend)
		return nil
	}
	snap, note, err := lookupOrBuild(ctx, d, c, v, key)
	if err != nil {
		return err
	}
	if snap == nil {
		d.Logger.Debug("booting cold", "vm_id", v.ID, "why", note)
		v.SnapshotNote = note
		return nil
	}
	v.warm.snapshot = snap
	return nil
}

// lookupOrBuild finds the snapshot for key in the environment's store,
// building it when there is none (on first use, or now for `prepare`),
// unless its build failed recently. A snapshot found unusable is
// discarded (and rebuilt now only for `prepare`: this start does without,
// the next one builds it). With no snapshot to use, note says why; err is
// the caller giving up or a store that cannot be read.
func lookupOrBuild(ctx context.Context, d Deps, c Config, v *VM, key golden.Key) (*golden.Snapshot, string, error) {
	store := SnapshotStore(v.Environment.Dir)
	snap, err := store.Lookup(key)
	var bad *golden.Invalid
	if errors.As(err, &bad) {
		d.Logger.Warn("discarding memory snapshot", "vm_id", v.ID, "dir", bad.Dir, "reason", bad.Reason)
		if derr := store.Discard(bad.Dir); derr != nil {
			d.Logger.Warn("discard memory snapshot", "dir", bad.Dir, "err", derr)
		}
		if !c.buildNow {
			return nil, "snapshot discarded: " + bad.Reason, nil
		}
		err = golden.ErrNotFound
	}
	if errors.Is(err, golden.ErrNotFound) {
		if why, failed := store.RecentlyFailed(key); failed && !c.buildNow {
			return nil, "snapshot build failed recently: " + why, nil
		}
		snap, err = buildSnapshot(ctx, d, c, v, store, key)
		if err != nil {
			if ctx.Err() != nil {
				return nil, "", ctx.Err()
			}
			d.Logger.Warn("memory snapshot build failed", "vm_id", v.ID, "key", key.ID(), "err", err)
			store.MarkFailed(key, err.Error())
			return nil, "snapshot build failed: " + err.Error(), nil
		}
	}
	if err != nil {
		return nil, "", err
	}
	return &snap, "", nil
}

func startOrRestore(ctx context.Context, d Deps, c Config, v *VM) error {
	snap := v.warm.snapshot
	if snap == nil {
		return startVMM(ctx, d, c, v)
	}
	v.warm.snapshotCmdline = true
	v.warm.state = snap.StatePath()
	if err := startVMM(ctx, d, c, v); err != nil {
		if ctx.Err() != nil {
			return err // the caller gave up: no evidence against the snapshot
		}
		return restoreFailed(d, v, err)
	}
	return nil
}

// restoreFailed discards the snapshot a restore failed from (the next
// start rebuilds it) and marks the error for Boot's cold retry.
func restoreFailed(d Deps, v *VM, err error) error {
	if snap := v.warm.snapshot; snap != nil {
		d.Logger.Warn("discarding memory snapshot after a failed restore", "vm_id", v.ID, "dir", snap.Dir, "err", err)
		store := SnapshotStore(v.Environment.Dir)
		_ = store.Discard(snap.Dir)
		// Not rebuilt at once: a restore that fails for this
		// configuration would fail again after the rebuild.
		store.MarkFailed(snap.Manifest.Key, "restore failed: "+err.Error())
	}
	return &warmFailure{err: err}
}

// connectRestored makes the agent client of a restored guest without a
// readiness round trip: the identity refresh is its first call and says
// whether the agent answers (each round trip of a freshly restored TCG
// guest costs as much as the restore).
func connectRestored(ctx context.Context, d Deps, c Config, v *VM) error {
	if v.warm.snapshot == nil {
		return connectAgent(ctx, d, c, v)
	}
	v.Agent = agentapi.NewClient(v.Machine.DialAgent)
	v.onClose(func(context.Context) error { return v.Agent.Close() })
	return nil
}

// refreshIdentity makes a restored guest a machine of its own before the
// caller gets it (and so before any user code runs in it). Its answer is
// also the guest's health.
func refreshIdentity(ctx context.Context, d Deps, c Config, v *VM) error {
	if v.warm.snapshot == nil {
		v.Start = StartCold
		return nil
	}
	disk := c.WorkspaceDisk
	if v.warm.mounted {
		disk = "" // mounted before the save (warm_mounted.go)
	}
	req, err := NewIdentity(v.ID, c.Network, disk)
	req.WorkspaceLayered = c.WorkspaceBase != "" && disk != ""
	if err != nil {
		return err
	}
	// The guest times its steps for a debug log (agent/steps.go).
	req.Timings = d.Logger.Enabled(ctx, slog.LevelDebug)
	// The restored guest gets as long to answer as a booted one gets to
	// come up (c.BootTimeout): a cold boot on the same loaded host would
	// be slower still, so only evidence (its QEMU exited, the agent
	// refused) ends a restore early. A shorter bound (15 s) turned slow
	// restores at a load of 15-20 into cold boots and discarded snapshots.
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, c.BootTimeout)
	defer cancel()
	go func() {
		select {
		case <-v.Machine.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	// The first call (agentapi/first.go): no yamux, HTTP or JSON code in
	// the guest before its identity is applied, and a run's command in
	// the same frame.
	resp, err := v.Agent.First(ctx, c.BootTimeout, req, c.FirstExec)
	if err != nil && caller.Err() != nil {
		// The caller gave up (a pool stopping mid-fill, an interrupted
		// create): no evidence against the snapshot, which a failed
		// restore would discard and bar from rebuilding for a while.
		return fmt.Errorf("refresh the restored guest's identity: %w", caller.Err())
	}
	if err != nil {
		failed := restoreFailed(d, v, fmt.Errorf("refresh the restored guest's identity: %w", err))
		if errors.Is(err, agentapi.ErrCommandHandedOver) {
			// The snapshot is discarded as for any failed restore, but
			// no cold boot runs the command a second time.
			return errdefs.Wrap(errdefs.ErrUnavailable, err, "run it again: the next start boots cold or from a fresh snapshot",
				"the restored guest did not answer its first call")
		}
		return failed
	}
	if err := awaitDiskSynced(ctx, v); err != nil { // warm_mounted.go
		return err
	}
	v.Health = resp.Health
	if resp.Timings != "" {
		d.Logger.Debug("identity refreshed", "vm_id", v.ID, "guest_us", resp.Timings)
	}
	v.Start = StartWarm
	return nil
}

// NewIdentity is the identity a guest restored as id gets: fresh host
// entropy, the host clock, a hostname and MAC derived from id, a random
// machine-id, and the workspace disk (when there is one) to mount.
func NewIdentity(id string, network bool, workspaceDisk string) (agentapi.IdentityRequest, error) {
	req := agentapi.IdentityRequest{Entropy: make([]byte, agentapi.IdentityEntropyBytes), Hostname: Hostname(id)}
	if _, err := rand.Read(req.Entropy); err != nil {
		return req, err
	}
	var mid [16]byte
	if _, err := rand.Read(mid[:]); err != nil {
		return req, err
	}
	req.MachineID = hex.EncodeToString(mid[:])
	if network {
		req.MAC = MAC(id)
	}
	if workspaceDisk != "" {
		st, err := os.Stat(workspaceDisk)
		if err != nil {
			return req, err
		}
		req.MountWorkspace, req.WorkspaceBytes = true, st.Size()
	}
	req.UnixNano = time.Now().UnixNano()
	return req, nil
}

// Hostname is the hostname of a restored guest: "pyro-" and a digest of
// its id (ids may be names; the hostname stays a short DNS label).
func Hostname(id string) string {
	h := sha256.Sum256([]byte(id))
	return "pyro-" + hex.EncodeToString(h[:4])
}

// buildSnapshot boots a guest of v's configuration with a placeholder
// workspace disk, waits for its agent, and
// saves it. The build's own VM directory lives in the build's temporary
// directory, so nothing of it is ever listed as a VM.
func buildSnapshot(ctx context.Context, d Deps, c Config, v *VM, store *golden.Store, key golden.Key) (golden.Snapshot, error) {
	sb := v.backend.(snapshotBackend)
	bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	b, existing, err := store.Begin(bctx, key)
	if err != nil {
		return golden.Snapshot{}, err
	}
	if b == nil {
		return existing, nil // another start built it meanwhile
	}
	defer b.Abort()
	dir, err := vmdir.Open(b.Dir, "vm")
	if err != nil {
		return golden.Snapshot{}, err
	}
	if err := dir.Create(); err != nil {
		return golden.Snapshot{}, err
	}
	gc := Config{ID: "golden-" + key.ID(), Dir: dir, Environment: c.Environment, VCPUs: c.VCPUs, MemMiB: c.MemMiB,
		Network: c.Network, BootTimeout: c.BootTimeout, Cold: true}
	var leftovers []string
	if key.MountedWorkspace {
		if leftovers, err = mountedDisks(ctx, d, b, key.WorkspaceBytes, &gc); err != nil { // warm_mounted.go
			return golden.Snapshot{}, err
		}
	} else if c.WorkspaceDisk != "" {
		st, err := os.Stat(c.WorkspaceDisk)
		if err != nil {
			return golden.Snapshot{}, err
		}
		gc.WorkspaceDisk = filepath.Join(b.Dir, "placeholder.img")
		if err := os.WriteFile(gc.WorkspaceDisk, nil, 0o600); err != nil {
			return golden.Snapshot{}, err
		}
		if err := os.Truncate(gc.WorkspaceDisk, st.Size()); err != nil {
			return golden.Snapshot{}, err
		}
		if c.WorkspaceBase != "" {
			// Baselines differ in size and a read-only disk cannot be
			// resized after a restore: the placeholder is larger than any
			// baseline, so each one's ext4 fits the size the guest keeps.
			gc.WorkspaceBase = filepath.Join(b.Dir, "placeholder-base.img")
			if err := os.WriteFile(gc.WorkspaceBase, nil, 0o600); err != nil {
				return golden.Snapshot{}, err
			}
			if err := os.Truncate(gc.WorkspaceBase, basePlaceholderBytes); err != nil {
				return golden.Snapshot{}, err
			}
			if c.TransferDisk != "" {
				// Read-only and larger than any transfer disk too.
				gc.TransferDisk = gc.WorkspaceBase
			}
		}
	}
	steps := ColdBoot().
		Swap(StepChooseBackend, func(context.Context, Deps, Config, *VM) error {
			return nil // the caller's backend, already probed
		}).
		InsertAfter(StepChooseBackend, Step{"snapshot machine", func(_ context.Context, _ Deps, _ Config, g *VM) error {
			g.Use(v.backend, v.AccelNote)
			g.warm.snapshotCmdline, g.warm.mounted = true, key.MountedWorkspace
			return nil
		}})
	g, err := BootWith(bctx, steps, d, gc)
	if err != nil {
		return golden.Snapshot{}, fmt.Errorf("boot the snapshot's guest: %w", err)
	}
	defer g.Close(context.Background())
	if err := primeSnapshotGuest(bctx, g, key.MountedWorkspace); err != nil { // prime.go
		return golden.Snapshot{}, err
	}
	state, err := os.OpenFile(b.StatePath(), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return golden.Snapshot{}, err
	}
	err = sb.Save(bctx, dir, state, func() { _ = g.Agent.Close() })
	if cerr := state.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return golden.Snapshot{}, fmt.Errorf("save the snapshot: %w", err)
	}
	if err := g.Close(context.Background()); err != nil {
		d.Logger.Debug("stop the snapshot's guest", "err", err)
	}
	if err := compactState(sb, b.StatePath()); err != nil { // compact.go
		d.Logger.Warn("memory snapshot kept uncompacted", "err", err)
	}
	_ = os.RemoveAll(string(dir))
	for _, p := range leftovers {
		_ = os.Remove(p)
	}
	if gc.WorkspaceDisk != "" && !key.MountedWorkspace {
		_ = os.Remove(gc.WorkspaceDisk)
		_ = os.Remove(gc.WorkspaceBase)
	}
	snap, err := b.Publish()
	if err != nil {
		return golden.Snapshot{}, err
	}
	d.Logger.Info("memory snapshot built", "dir", snap.Dir, "ms", snap.Manifest.BuildMS)
	return snap, nil
}

// PrepareSnapshot makes sure the golden snapshot for c exists (building it
// when missing or unusable) without keeping a guest: `pyro prepare` and
// `pyro env pull --warm`. It returns the snapshot's directory.
func PrepareSnapshot(ctx context.Context, d Deps, c Config) (golden.Snapshot, error) {
	return prepare(ctx, d, c, func(ctx context.Context, d Deps, c Config, v *VM) (*golden.Snapshot, error) {
		if err := findSnapshot(ctx, d, c, v); err != nil {
			return nil, err
		}
		if v.warm.snapshot == nil {
			return nil, fmt.Errorf("no memory snapshot: %s", v.SnapshotNote)
		}
		return v.warm.snapshot, nil
	})
}

// prepare runs the boot steps up to finding (and building) a snapshot
// with find, without a guest of its own: no directory, no VMM.
func prepare(ctx context.Context, d Deps, c Config, find func(context.Context, Deps, Config, *VM) (*golden.Snapshot, error)) (golden.Snapshot, error) {
	c.Cold, c.buildNow = false, true
	var snap golden.Snapshot
	steps := ColdBoot().Remove(StepPrepareDirectory).Remove(StepStartVMM).Remove(StepConnectAgent).
		InsertAfter(StepCheckFeatures, Step{StepFindSnapshot, func(ctx context.Context, d Deps, c Config, v *VM) error {
			s, err := find(ctx, d, c, v)
			if err != nil {
				return err
			}
			snap = *s
			return nil
		}})
	v, err := BootWith(ctx, steps, d, c)
	if err != nil {
		return golden.Snapshot{}, err
	}
	_ = v.Close(context.Background())
	return snap, nil
}
