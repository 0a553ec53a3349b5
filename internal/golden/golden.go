// Package golden stores memory snapshots of freshly booted guests
// ("golden snapshots", issue #14): guest RAM in a file plus the VMM's
// device state, saved once the guest agent answered, so that later guests
// of the same configuration are restored in a fraction of a boot.
//
// A snapshot is keyed by everything that makes two guests the same machine
// (Key): its format, the environment's digest, vCPUs, memory, network class, the
// workspace disk slot, the backend and its binary, the kernel command line
// and the initramfs (agent binary and modules). Snapshots live beside the
// environment they were made from, one directory per key:
//
//	<env version dir>/golden/<key id>/manifest.json  the key, the state's stamp
//	                                  /state.bin      guest RAM and device state
//	                                  /upper.ext4     (mounted workspaces) the
//	                                                  upper disk as the guest left it
//
// Building happens in a hidden temporary directory under a per-key lock and
// is published by one rename after every file is synced, so a crash or a
// full disk while saving leaves no snapshot a later start would use. Before
// every use the manifest must match the key and the state file the inode,
// size and ctime it had when published (any write to it changes its ctime;
// nobody can set a ctime back; hashing ~130 MiB on every start would cost
// more than the restore). Anything else is reported as Invalid, and the
// caller discards it and boots cold. Nothing but pyro ever holds a writable
// descriptor of a published file: the VMM reads the state through a
// read-only descriptor (see internal/vmm/qemu/snapshot.go).
package golden

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// File names inside a snapshot directory.
const (
	ManifestFile = "manifest.json"
	StateFile    = "state.bin"
	// UpperFile is the workspace upper disk of a snapshot whose guest had
	// /workspace mounted (Key.MountedWorkspace): a workspace restored from
	// it starts on a copy of this file, the disk its guest's caches hold.
	UpperFile = "upper.ext4"
)

// Format is the layout of a snapshot's files, part of its Key: 2 carries
// guest RAM inside the state file (1, RAM in a file the VMM mapped, is
// never used again).
const Format = 2

// DirName is the directory of snapshots inside an environment's directory.
const DirName = "golden"

const (
	tmpPrefix     = ".tmp-"
	discardPrefix = ".discard-"
	maxManifest   = 64 << 10
)

// Key is what makes two guests the same machine.
type Key struct {
	Format      int    `json:"format"`
	Environment string `json:"environment"`
	EnvDigest   string `json:"environment_digest"`
	VCPUs       int    `json:"vcpu_count"`
	MemMiB      int    `json:"mem_mib"`
	Network     string `json:"network"` // "off" or the network class
	Workspace   bool   `json:"workspace"`
	Backend     string `json:"backend"`
	VMM         string `json:"vmm"` // the backend's snapshot identity (binary, accelerator)
	Cmdline     string `json:"cmdline"`
	Initramfs   string `json:"initramfs"` // agent binary and modules
	// MountedWorkspace: the guest has an empty layered /workspace mounted
	// over disks of WorkspaceBytes each (UpperFile, and a baseline whose
	// digest is Manifest.BaseDigest), for the first start of an unseeded
	// workspace. Omitted when false, so other keys keep their ids.
	MountedWorkspace bool  `json:"mounted_workspace,omitempty"`
	WorkspaceBytes   int64 `json:"workspace_bytes,omitempty"`
}

// ID names the key: a digest of all its fields.
func (k Key) ID() string {
	b, _ := json.Marshal(k)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// Stamp is what changes whenever a file's content is written.
type Stamp struct {
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	CtimeNS int64  `json:"ctime_ns"`
}

// StampOf stats path.
func StampOf(path string) (Stamp, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return Stamp{}, err
	}
	return Stamp{Ino: st.Ino, Size: st.Size, CtimeNS: st.Ctim.Nano()}, nil
}

// Manifest describes one published snapshot.
type Manifest struct {
	ID        string    `json:"id"`
	Key       Key       `json:"key"`
	CreatedAt time.Time `json:"created_at"`
	State     Stamp     `json:"state"`
	// BuildMS is how long the boot and save took.
	BuildMS int64 `json:"build_ms"`
	// Upper is UpperFile's stamp and BaseDigest the digest
	// (workspace.ImageDigest) of the baseline image the guest had mounted,
	// for Key.MountedWorkspace snapshots only.
	Upper      *Stamp `json:"upper,omitempty"`
	BaseDigest string `json:"base_digest,omitempty"`
}

// Snapshot is a verified, published snapshot.
type Snapshot struct {
	Dir      string
	Manifest Manifest
}

func (s Snapshot) StatePath() string { return filepath.Join(s.Dir, StateFile) }

// UpperPath is the upper disk of a MountedWorkspace snapshot.
func (s Snapshot) UpperPath() string { return filepath.Join(s.Dir, UpperFile) }

// ErrNotFound: no snapshot for the key.
var ErrNotFound = errors.New("no memory snapshot")

// Invalid is a snapshot that exists but must not be used.
type Invalid struct {
	Dir    string
	Reason string
}

func (e *Invalid) Error() string { return "memory snapshot " + e.Dir + " is unusable: " + e.Reason }

// Store is the snapshot directory of one environment.
type Store struct{ dir string }

// New returns the store whose snapshots live in dir
// (<environment dir>/golden).
func New(dir string) *Store { return &Store{dir: dir} }

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Lookup returns the verified snapshot for k: ErrNotFound when there is
// none, *Invalid when one exists but fails a check.
func (s *Store) Lookup(k Key) (Snapshot, error) {
	dir := filepath.Join(s.dir, k.ID())
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return Snapshot{}, ErrNotFound
	}
	m, err := Verify(dir)
	if err != nil {
		return Snapshot{}, &Invalid{Dir: dir, Reason: err.Error()}
	}
	if m.Key != k {
		return Snapshot{}, &Invalid{Dir: dir, Reason: "its manifest was made for another configuration"}
	}
	// A use: the directory's modification time is when the snapshot was
	// last used, so the store's trim (at a publish) drops the least
	// recently used, not a snapshot built long ago and still in use. (The
	// state file's stamp, which Verify checks, is not touched.)
	now := time.Now()
	_ = os.Chtimes(dir, now, now)
	return Snapshot{Dir: dir, Manifest: m}, nil
}

// Verify checks the snapshot in dir against its manifest and returns it.
func Verify(dir string) (Manifest, error) {
	var m Manifest
	b, err := readCapped(filepath.Join(dir, ManifestFile), maxManifest)
	if err != nil {
		return m, fmt.Errorf("manifest: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("manifest: %w", err)
	}
	if m.ID != m.Key.ID() || m.ID != filepath.Base(dir) {
		return m, errors.New("manifest id does not match its key or directory")
	}
	if m.Key.Format != Format {
		return m, fmt.Errorf("snapshot format %d, want %d", m.Key.Format, Format)
	}
	st, err := StampOf(filepath.Join(dir, StateFile))
	if err != nil {
		return m, fmt.Errorf("state file: %w", err)
	}
	if st.Size != m.State.Size {
		return m, fmt.Errorf("state file has %d bytes, want %d", st.Size, m.State.Size)
	}
	if st != m.State {
		return m, errors.New("state file was written after the snapshot was saved")
	}
	if m.Key.MountedWorkspace {
		// The guest's caches hold this disk's blocks: a changed copy would
		// hand every restored workspace a file system its kernel misreads.
		if m.Upper == nil || m.BaseDigest == "" {
			return m, errors.New("mounted-workspace snapshot without its upper disk or baseline digest")
		}
		up, err := StampOf(filepath.Join(dir, UpperFile))
		if err != nil {
			return m, fmt.Errorf("upper disk: %w", err)
		}
		if up != *m.Upper {
			return m, errors.New("upper disk was written after the snapshot was saved")
		}
	}
	return m, nil
}

// Discard removes the snapshot directory dir (renamed hidden first, so a
// concurrent Lookup never sees half of it).
func (s *Store) Discard(dir string) error {
	if filepath.Dir(dir) != filepath.Clean(s.dir) {
		return fmt.Errorf("%s is not a snapshot of %s", dir, s.dir)
	}
	hidden := filepath.Join(s.dir, discardPrefix+filepath.Base(dir)+"-"+randSuffix())
	if err := os.Rename(dir, hidden); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return os.RemoveAll(hidden)
}

// Info is one snapshot on disk, for doctor, env inspect and prune.
type Info struct {
	ID         string    `json:"id"`
	Dir        string    `json:"dir"`
	VCPUCount  int       `json:"vcpu_count,omitempty"`
	MemMiB     int       `json:"mem_mib,omitempty"`
	Network    string    `json:"network,omitempty"`
	Workspace  bool      `json:"workspace"`
	Backend    string    `json:"backend,omitempty"`
	CreatedAt  time.Time `json:"created_at,omitzero"`
	StateBytes int64     `json:"state_bytes"` // allocated on disk
	// Problem says why the snapshot would not be used; empty when valid.
	Problem string `json:"problem,omitempty"`
	// Partial: a build that never finished (a crash, a full disk).
	Partial bool `json:"partial,omitempty"`
}

// List describes every snapshot directory, valid or not, and leftovers.
func (s *Store) List() ([]Info, error) {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(s.dir, e.Name())
		in := Info{ID: e.Name(), Dir: dir}
		in.StateBytes = allocated(filepath.Join(dir, StateFile))
		if strings.HasPrefix(e.Name(), ".") {
			in.Partial, in.Problem = true, "unfinished build or discard"
			out = append(out, in)
			continue
		}
		m, err := Verify(dir)
		if err != nil {
			in.Problem = err.Error()
		}
		in.VCPUCount, in.MemMiB, in.Network, in.Workspace = m.Key.VCPUs, m.Key.MemMiB, m.Key.Network, m.Key.Workspace
		in.Backend, in.CreatedAt = m.Key.Backend, m.CreatedAt
		out = append(out, in)
	}
	return out, nil
}

// Removed is one snapshot directory RemoveAll deleted.
type Removed struct {
	Path   string
	Reason string
	Bytes  int64
}

// RemoveAll deletes every snapshot (they are a cache, rebuilt on the next
// start that wants one); guests restored from one keep their private
// mapping of the memory file.
func (s *Store) RemoveAll() ([]Removed, error) {
	list, err := s.List()
	if err != nil {
		return nil, err
	}
	var out []Removed
	for _, in := range list {
		reason := "memory snapshot (rebuilt on next use)"
		if in.Partial {
			reason = "unfinished memory snapshot"
		} else if in.Problem != "" {
			reason = "unusable memory snapshot: " + in.Problem
		}
		if err := os.RemoveAll(in.Dir); err != nil {
			return out, err
		}
		out = append(out, Removed{Path: in.Dir, Reason: reason, Bytes: in.StateBytes})
	}
	_ = os.Remove(s.dir) // only if empty
	return out, nil
}

func allocated(p string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(p, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

func readCapped(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return b, nil
}
