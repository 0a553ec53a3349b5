// Package instance keeps the on-disk record of a VM or workspace and
// observes its status. The record holds what the caller asked for; whether
// it runs is never stored but observed: the supervisor's process and socket,
// and the exit note a supervisor leaves when it ends on purpose.
package instance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofrs/flock"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/redact"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// States a VM or workspace can be observed in.
const (
	Created  = "created"  // recorded, never started
	Starting = "starting" // supervisor up, guest booting
	Running  = "running"  // guest agent answering
	Stopped  = "stopped"  // stopped on request
	Expired  = "expired"  // its TTL passed
	Broken   = "broken"   // died without a clean stop; Reason says how
	// Unresponsive: the supervisor lives but the guest agent did not answer
	// its health call within a deadline (a starved or hung guest).
	Unresponsive = "unresponsive"
)

// Cause says, as a value callers can compare, why an instance is in its
// state; the free-text reason beside it is for people only.
type Cause string

const (
	CauseNone Cause = ""
	// Ends on purpose (written in the exit note).
	CauseRequested  Cause = "requested"   // stopped on request
	CauseSignal     Cause = "signal"      // the supervisor got SIGTERM/SIGINT/SIGHUP
	CauseTTL        Cause = "ttl"         // its TTL passed
	CauseBootFailed Cause = "boot_failed" // the guest never answered
	CauseVMMExited  Cause = "vmm_exited"  // the VMM died under a running guest
	// Observed, never written.
	CauseSupervisorGone   Cause = "supervisor_gone"          // no process, no exit note (killed)
	CauseSupervisorSilent Cause = "supervisor_not_answering" // process alive, socket silent
	CauseAgentSilent      Cause = "agent_not_answering"      // supervisor answers, guest agent does not
)

// Record kinds. A one-shot run (RunInVM) has a record too, so that the
// directory a dead run leaves behind is recognisable and reaped; its
// "supervisor" pid is the calling process, which owns the guest.
const (
	KindVM        = "vm"
	KindWorkspace = "workspace"
	KindRun       = "run"
	// KindPooled is a workspace a warm pool made ahead of any create: its
	// guest waits paused under its own supervisor until a create claims
	// it and the record becomes KindWorkspace. Until then no workspace
	// command finds it (Open of a workspace is not found), and its
	// creator is the pool's process, so reconcile removes it when the
	// pool died.
	KindPooled = "pooled"
)

// Record is what was asked for. It is written atomically and changed only
// under the instance's lock.
type Record struct {
	ID          string `json:"id"`
	Kind        string `json:"kind"` // KindVM, KindWorkspace or KindRun
	Environment string `json:"environment"`
	// EnvironmentDigest is the image manifest digest of an image
	// environment (boots stay on it), or the catalog environment's
	// manifest digest at creation.
	EnvironmentDigest string `json:"environment_digest,omitempty"`
	VCPUCount         int    `json:"vcpu_count"`
	MemMiB            int    `json:"mem_mib"`
	Network           bool   `json:"network"` // NetworkPolicy is not off (kept for older readers)
	// NetworkPolicy and AllowHosts are the network policy asked for (see
	// Policy); the supervisor's network stack enforces them.
	NetworkPolicy   netpolicy.Mode `json:"network_policy,omitempty"`
	AllowHosts      []string       `json:"allow_hosts,omitempty"`
	AllowHostCompat bool           `json:"allow_host_compat"`
	TTLSeconds      int            `json:"ttl_seconds,omitempty"`
	CreatedAt       time.Time      `json:"created_at"`
	ExpiresAt       *time.Time     `json:"expires_at,omitempty"`
	// WorkspaceDisk is the path of /workspace's disk image, for workspaces.
	WorkspaceDisk string `json:"workspace_disk,omitempty"`
	// Stopped says a person or program stopped the instance on purpose
	// (`pyro workspace stop`): commands then refuse instead of booting it
	// again, until it is started explicitly. A crash never sets it.
	Stopped bool `json:"stopped,omitempty"`
	// WorkspaceBase, when set, is a layered workspace's baseline image
	// (read-only; WorkspaceDisk is then the writable upper layer).
	WorkspaceBase string `json:"workspace_base,omitempty"`
	// Extra holds kind-specific metadata (workspace seed, resets, secrets
	// names) that the supervisor does not interpret.
	Extra json.RawMessage `json:"extra,omitempty"`
}

// Policy is the network policy in force. A record written before policies
// existed says only network true/false, which means egress or off.
func (r Record) Policy() netpolicy.Policy {
	if r.NetworkPolicy == "" {
		if r.Network {
			return netpolicy.Policy{Mode: netpolicy.Egress}
		}
		return netpolicy.Policy{Mode: netpolicy.Off}
	}
	return netpolicy.Policy{Mode: r.NetworkPolicy, AllowHosts: slices.Clone(r.AllowHosts)}
}

// SetPolicy records p (checked by the caller) and keeps Network in step.
func (r *Record) SetPolicy(p netpolicy.Policy) {
	p = p.Normalized()
	r.NetworkPolicy, r.AllowHosts, r.Network = p.Mode, slices.Clone(p.AllowHosts), p.Mode.Networked()
}

// ExitNote is written by a supervisor that ends on purpose.
type ExitNote struct {
	State  string    `json:"state"` // stopped, expired or broken
	Cause  Cause     `json:"cause,omitempty"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// Load reads the record in dir. A missing directory is ErrNotFound.
func Load(dir vmdir.Dir, kind string) (Record, error) {
	var r Record
	b, err := os.ReadFile(dir.Path(vmdir.Record))
	if errors.Is(err, os.ErrNotExist) {
		id := filepath.Base(string(dir))
		return r, errdefs.New(errdefs.ErrNotFound, "list them with `pyro "+kind+" list`", "%s %q not found", kind, id)
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("read %s record: %w", kind, err)
	}
	return r, nil
}

// Save writes the record atomically.
func Save(dir vmdir.Dir, r Record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(dir.Path(vmdir.Record), b, 0o600)
}

// Lock takes the instance's exclusive lock, waiting until ctx ends.
func Lock(ctx context.Context, dir vmdir.Dir) (unlock func(), err error) {
	l := flock.New(dir.Path(vmdir.Lock))
	ok, err := l.TryLockContext(ctx, 20*time.Millisecond)
	if err != nil || !ok {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "another pyro call is changing it; retry", "cannot lock %s", filepath.Base(string(dir)))
	}
	return func() { _ = l.Unlock() }, nil
}

// WriteExit records why a supervisor ended.
func WriteExit(dir vmdir.Dir, state string, cause Cause, reason string) error {
	b, _ := json.Marshal(ExitNote{State: state, Cause: cause, Reason: reason, At: time.Now().UTC()})
	return fsutil.WriteFileAtomic(dir.Path(vmdir.Exit), b, 0o600)
}

// ReadExit returns the exit note, if any.
func ReadExit(dir vmdir.Dir) (ExitNote, bool) {
	var n ExitNote
	b, err := os.ReadFile(dir.Path(vmdir.Exit))
	if err != nil || json.Unmarshal(b, &n) != nil {
		return n, false
	}
	return n, true
}

// WritePid records the current process as the supervisor, with its start
// time so a recycled pid is not mistaken for it.
func WritePid(dir vmdir.Dir) error {
	pid := os.Getpid()
	return fsutil.WriteFileAtomic(dir.Path(vmdir.SupervisorPid), []byte(fmt.Sprintf("%d %d\n", pid, startTime(pid))), 0o600)
}

// RemovePid removes the supervisor pid file if it names the current
// process.
func RemovePid(dir vmdir.Dir) {
	if pid, _ := SupervisorPid(dir); pid == os.Getpid() {
		_ = os.Remove(dir.Path(vmdir.SupervisorPid))
	}
}

// SupervisorPid returns the recorded supervisor pid and whether that
// process is still alive (same pid and start time). pid 0: never started.
func SupervisorPid(dir vmdir.Dir) (pid int, alive bool) {
	return readPidFile(dir.Path(vmdir.SupervisorPid))
}

// VMMPid returns the pid recorded in dir's vmm.pid and whether that
// process is still dir's VMM. The file holds the pid alone (the VMM writes
// no start time), so a recycled pid is told apart by what the process is:
// host-compat runs with the VM directory as its cwd, QEMU carries
// dir.VMMName() on its command line. A VMM that has exited but is not yet
// reaped (a zombie) has neither: it is gone.
func VMMPid(dir vmdir.Dir) (pid int, alive bool) {
	b, err := os.ReadFile(dir.Path(vmdir.VMMPid))
	if err != nil {
		return 0, false
	}
	if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 0 {
		return 0, false
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && cwd == string(dir) {
		return pid, !isZombie(pid)
	}
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return pid, err == nil && slices.Contains(strings.Split(string(b), "\x00"), dir.VMMName())
}

// WriteCreator marks the instance as being created by the current process
// until DoneCreating: should this process die first, Creator reports the
// instance half-made.
func WriteCreator(dir vmdir.Dir) error {
	pid := os.Getpid()
	return fsutil.WriteFileAtomic(dir.Path(vmdir.Creator), []byte(fmt.Sprintf("%d %d\n", pid, startTime(pid))), 0o600)
}

// WriteCreatorPID marks the instance as being created by process pid (a
// pool hands a pooled workspace to the process that claimed it, which
// completes it): should that process die first, the instance is half-made.
func WriteCreatorPID(dir vmdir.Dir, pid int) error {
	st := startTime(pid)
	if st == 0 {
		return fmt.Errorf("process %d is gone", pid)
	}
	return fsutil.WriteFileAtomic(dir.Path(vmdir.Creator), []byte(fmt.Sprintf("%d %d\n", pid, st)), 0o600)
}

// DoneCreating marks the instance complete.
func DoneCreating(dir vmdir.Dir) error {
	if err := os.Remove(dir.Path(vmdir.Creator)); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// Creator returns the pid of the process creating the instance (0: none,
// the instance is complete) and whether it is still alive.
func Creator(dir vmdir.Dir) (pid int, alive bool) {
	return readPidFile(dir.Path(vmdir.Creator))
}

// readPidFile reads "<pid> <start time>" and checks that process lives.
func readPidFile(path string) (pid int, alive bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	pid, _ = strconv.Atoi(f[0])
	st, _ := strconv.ParseUint(f[1], 10, 64)
	return pid, pid > 0 && startTime(pid) == st && !isZombie(pid)
}

// startTime is field 22 of /proc/PID/stat (clock ticks since boot), 0 if gone.
func startTime(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// Event is one line of the event log.
type Event struct {
	At     time.Time      `json:"at"`
	Event  string         `json:"event"`
	Fields map[string]any `json:"fields,omitempty"`
}

// AppendEvent adds one event to the log. Callers must not put secret
// values in fields; as a safeguard, string fields of a workspace with
// secrets are redacted.
func AppendEvent(dir vmdir.Dir, event string, fields map[string]any) {
	if red := Redactor(dir); !red.Empty() && len(fields) > 0 {
		safe := make(map[string]any, len(fields))
		for k, v := range fields {
			switch v := v.(type) {
			case string:
				safe[k] = red.String(v)
			case error:
				safe[k] = red.String(v.Error())
			default:
				safe[k] = v
			}
		}
		fields = safe
	}
	b, err := json.Marshal(Event{At: time.Now().UTC(), Event: event, Fields: fields})
	if err != nil {
		return
	}
	_ = fsutil.AppendLine(dir.Path(vmdir.Events), b)
}

// Redactor returns a redactor for the secret values of the VM or workspace
// in dir (vmdir.Secrets), or nil when it has none or they cannot be read.
func Redactor(dir vmdir.Dir) *redact.Redactor {
	b, err := os.ReadFile(dir.Path(vmdir.Secrets))
	if err != nil {
		return nil
	}
	var values map[string]string
	if json.Unmarshal(b, &values) != nil || len(values) == 0 {
		return nil
	}
	vals := make([]string, 0, len(values))
	for _, v := range values {
		vals = append(vals, v)
	}
	return redact.New(vals)
}
