// Package vmdir names the files of one VM's directory. Every file in it is a
// constant here, so no other package assembles these paths by hand.
package vmdir

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// File names inside a VM directory. Sockets are bound and dialled through
// the directory's descriptor (internal/unixsock), so their absolute path
// length never matters; QEMU gets its sockets as listening descriptors.
const (
	ConsoleLog = "console.log" // the guest's serial console
	AgentSock  = "agent.sock"  // virtio-serial channel to the guest agent
	QMPSock    = "qmp.sock"    // QEMU machine protocol
	VMMPid     = "vmm.pid"     // pid of the VMM process
	Record     = "vm.json"     // the VM's record
	RunDir     = "run"         // scratch for host-compat

	SupervisorSock = "supervisor.sock" // the supervisor's HTTP API
	SupervisorPid  = "supervisor.pid"  // "<pid> <start time>" of the supervisor
	SupervisorLog  = "supervisor.log"  // the supervisor's stdout/stderr and slog
	Exit           = "exit.json"       // written by a supervisor that ended on purpose
	Events         = "events.jsonl"    // the VM's event log, one JSON object a line
	Lock           = "lock"            // flock serialising lifecycle changes
	// Secrets holds a workspace's secret values (mode 0600), the only
	// file on the host that may contain them.
	Secrets = "secrets.json"
	// Creator is "<pid> <start time>" of the process still creating the
	// instance (a workspace: until its baseline is recorded). Present with
	// that process gone, the instance is half-made: reconcile removes it.
	Creator = "creator.pid"
)

// ValidateID checks that id is safe as a single path component.
func ValidateID(id string) error {
	if !isID(id) {
		return errdefs.New(errdefs.ErrInvalidArgument, "ids are lowercase letters, digits and dashes", "invalid id %q", id)
	}
	return nil
}

// NewID returns a fresh random id (12 hex digits).
func NewID() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b[:])
}

// Dir is one VM's directory.
type Dir string

// Open returns the directory for id under parent, validating id first.
func Open(parent, id string) (Dir, error) {
	if err := ValidateID(id); err != nil {
		return "", err
	}
	return Dir(filepath.Join(parent, id)), nil
}

// Path returns the path of a file in the directory.
func (d Dir) Path(name string) string { return filepath.Join(string(d), name) }

// Create makes the directory (mode 0700).
func (d Dir) Create() error { return os.MkdirAll(string(d), 0o700) }

// Remove deletes the directory. It is renamed hidden first, so a crash
// half-way leaves a ".deleting-" directory that a later prune recognises
// instead of a VM that looks real.
func (d Dir) Remove() error {
	hidden := filepath.Join(filepath.Dir(string(d)), ".deleting-"+filepath.Base(string(d)))
	if err := os.Rename(string(d), hidden); err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	return fsutil.RemoveAll(hidden)
}

// IsHidden reports whether name is a leftover of an interrupted Remove.
func IsHidden(name string) bool { return strings.HasPrefix(name, ".deleting-") }

// isID: a lowercase letter or digit, then up to 62 of those or '-'.
func isID(id string) bool {
	if len(id) == 0 || len(id) > 63 || id[0] == '-' {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// VMMName is the QEMU -name option that marks a VMM process as this
// directory's (QEMU runs with "/" as its working directory, so its cwd
// cannot say which VM it is). Commas are doubled, as QEMU options require.
func (d Dir) VMMName() string { return "guest=" + strings.ReplaceAll(string(d), ",", ",,") }
