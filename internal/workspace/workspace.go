// Package workspace holds the host-side pieces of persistent workspaces:
// the /workspace disk image, snapshots stored as verified tar files, the
// diff against the baseline, the command history and seed sources. The SDK
// composes them with the supervisor and the guest agent.
package workspace

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/hostres"
	"github.com/pyro-mcp/pyro/internal/names"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/tarutil"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Root is the guest path every workspace operation is confined to.
const Root = "/workspace"

// Files of a workspace directory (beside the VM files of internal/vmdir).
const (
	DiskFile     = "workspace.ext4"
	SnapshotsDir = "snapshots"
	HistoryFile  = "history.jsonl"
	SecretsFile  = vmdir.Secrets
)

// Baseline is the implicit snapshot taken when the workspace was created.
const Baseline = "baseline"

// defaultDiskBytes is the size of a /workspace disk (sparse: it costs only
// what is written).
const defaultDiskBytes = 8 << 30

// MaxDiskBytes bounds a /workspace disk: no disk is made larger, and a
// layer whose header claims more (the QEMU that writes the top layer
// writes its header too) is not flattened.
const MaxDiskBytes = 1 << 40

// DiskBytes is the size of new /workspace disks: $PYRO_WORKSPACE_DISK_MIB
// MiB when set (at least 16, at most MaxDiskBytes), else 8 GiB.
func DiskBytes() int64 {
	if v, err := strconv.Atoi(os.Getenv("PYRO_WORKSPACE_DISK_MIB")); err == nil && v >= 16 {
		return min(int64(v)<<20, MaxDiskBytes)
	}
	return defaultDiskBytes
}

// CreateDisk makes a fresh, empty ext4 image at path (replacing any).
func CreateDisk(ctx context.Context, path string, size int64) error {
	// A temp name of its own (two makers of one path never share one).
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	out, err := exec.CommandContext(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-m", "0", "-L", "workspace",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", tmp).CombinedOutput()
	if err != nil {
		_ = os.Remove(tmp)
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "install e2fsprogs", "mke2fs workspace disk: %s", strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// GuestPath resolves p (relative to /workspace, or absolute) to a clean
// absolute guest path under /workspace.
func GuestPath(p string) (string, error) {
	if p == "" {
		return Root, nil
	}
	if !strings.HasPrefix(p, "/") {
		p = Root + "/" + p
	}
	clean := filepath.Clean(p)
	if clean != Root && !strings.HasPrefix(clean, Root+"/") {
		return "", errdefs.New(errdefs.ErrInvalidArgument, "use a path under /workspace", "path %q is outside /workspace", p)
	}
	return clean, nil
}

// ValidateSnapshotName checks a snapshot name is a safe identifier.
func ValidateSnapshotName(name string) error {
	if !names.IsIdentifier(name) {
		return errdefs.New(errdefs.ErrInvalidArgument, "use letters, digits, '.', '_' and '-', up to 64 characters", "invalid snapshot name %q", name)
	}
	return nil
}

// Seed describes how /workspace was initialised.
type Seed struct {
	Mode       string `json:"mode"` // "empty", "directory" or "archive"
	SourcePath string `json:"source_path,omitempty"`
	FileCount  int    `json:"file_count"`
	Bytes      int64  `json:"bytes"`
	// OriginKind says where the content came from: "project_path" (the
	// git-tracked files of a checkout), "manual_seed_path" or "empty";
	// OriginRef names it (the path). Empty in records older than them.
	OriginKind string `json:"origin_kind,omitempty"`
	OriginRef  string `json:"origin_ref,omitempty"`
}

// OpenSource opens a host directory (a *DirSource) or a local
// .tar/.tar.gz/.tgz as an uncompressed tar stream, and says which it was.
func OpenSource(path string) (io.ReadCloser, string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, "", errdefs.Wrap(errdefs.ErrNotFound, err, "give a directory or a .tar/.tar.gz/.tgz file", "seed source %q", path)
	}
	if st.IsDir() {
		return newDirSource(abs), "directory", nil // stage.go
	}
	lower := strings.ToLower(abs)
	if !st.Mode().IsRegular() || !(strings.HasSuffix(lower, ".tar") || strings.HasSuffix(lower, ".tar.gz") || strings.HasSuffix(lower, ".tgz")) {
		return nil, "", errdefs.New(errdefs.ErrInvalidArgument, "give a directory or a .tar/.tar.gz/.tgz file", "unsupported source %q", path)
	}
	r, err := tarutil.OpenArchive(abs)
	if err != nil {
		return nil, "", errdefs.Wrap(errdefs.ErrInvalidArgument, err, "check the archive", "open %q", path)
	}
	return r, "archive", nil
}

// Snapshot is one stored /workspace checkpoint.
type Snapshot struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	Bytes     int64     `json:"bytes"`
	SHA256    string    `json:"sha256"`
	Implicit  bool      `json:"implicit"` // the baseline
	// Format says how the data is stored (FormatTar, FormatUpper,
	// FormatBase; see layers.go).
	Format string `json:"format,omitempty"`
}

// Snapshots stores snapshots as <dir>/<name>.tar with a <name>.json sidecar.
type Snapshots struct{ Dir string }

func (s Snapshots) tarPath(name string) string  { return filepath.Join(s.Dir, name+".tar") }
func (s Snapshots) metaPath(name string) string { return filepath.Join(s.Dir, name+".json") }

// checkName validates a snapshot name at every lookup, not only at
// create: names arrive from the model and the CLI, and become file names.
func checkName(name string) error {
	if name == Baseline {
		return nil
	}
	return ValidateSnapshotName(name)
}

// checkRecord validates a snapshot record read from disk against the name
// it was looked up by: a tampered or truncated record is refused, never
// trusted (its digest is sliced and compared later).
func checkRecord(name string, snap Snapshot) error {
	okFormat := snap.Format == FormatTar || (snap.Format == FormatUpper || snap.Format == FormatLayer) && name != Baseline || snap.Format == FormatBase && name == Baseline
	if snap.Name != name || !isSHA256(snap.SHA256) || snap.Bytes < 0 || snap.Implicit != (name == Baseline) || !okFormat {
		return errdefs.New(errdefs.ErrFailedPrecondition, "delete it, or restore another snapshot", "snapshot %q has a damaged record", name)
	}
	return nil
}

func isSHA256(s string) bool {
	if len(s) != sha256.Size*2 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// Save stores r as snapshot name, atomically; it refuses to overwrite.
func (s Snapshots) Save(name string, r io.Reader) (Snapshot, error) {
	if err := checkName(name); err != nil {
		return Snapshot{}, err
	}
	lim, err := s.admit(name)
	if err != nil {
		return Snapshot{}, err
	}
	r = hostres.CapReader(r, lim.SnapshotBytes, "snapshot "+strconv.Quote(name), hostres.SnapshotBytesEnv)
	f, err := os.CreateTemp(s.Dir, ".tmp-*")
	if err != nil {
		return Snapshot{}, err
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("store snapshot %q: %w", name, err)
	}
	snap := Snapshot{Name: name, CreatedAt: time.Now().UTC(), Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)), Implicit: name == Baseline}
	if err := os.Rename(f.Name(), s.tarPath(name)); err != nil {
		return Snapshot{}, err
	}
	b, _ := json.Marshal(snap)
	if err := os.WriteFile(s.metaPath(name), b, 0o600); err != nil {
		return Snapshot{}, err
	}
	return snap, nil
}

// admit makes room for a new snapshot name (its name already checked): the
// directory exists, no snapshot has the name, and a named one stays within
// the host's count cap. It returns the host's limits for the rest.
func (s Snapshots) admit(name string) (hostres.Limits, error) {
	lim := hostres.Load()
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return lim, err
	}
	if _, err := os.Stat(s.metaPath(name)); err == nil {
		return lim, errdefs.New(errdefs.ErrAlreadyExists, "delete it first or pick another name", "snapshot %q already exists", name)
	}
	if name != Baseline && s.namedCount() >= lim.SnapshotCount {
		return lim, errdefs.New(errdefs.ErrFailedPrecondition, "delete one with `pyro workspace snapshot delete`, or raise "+hostres.SnapshotCountEnv,
			"workspace has %d snapshots, the host's cap", lim.SnapshotCount)
	}
	return lim, nil
}

// namedCount is the number of snapshots besides the baseline.
func (s Snapshots) namedCount() int64 {
	have, _ := s.List()
	n := int64(0)
	for _, h := range have {
		if !h.Implicit {
			n++
		}
	}
	return n
}

// List returns the snapshots, baseline first, then by creation time.
// Records whose file name is not a valid snapshot name, or whose content
// does not match it, are left out.
func (s Snapshots) List() ([]Snapshot, error) {
	ents, err := os.ReadDir(s.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	out := []Snapshot{}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() || checkName(name) != nil {
			continue
		}
		if snap, err := s.Get(name); err == nil {
			out = append(out, snap)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Implicit != out[j].Implicit {
			return out[i].Implicit
		}
		return out[i].CreatedAt.Before(out[j].CreatedAt)
	})
	return out, nil
}

// Get returns one snapshot's metadata, validated.
func (s Snapshots) Get(name string) (Snapshot, error) {
	var snap Snapshot
	if err := checkName(name); err != nil {
		return snap, err
	}
	b, err := os.ReadFile(s.metaPath(name))
	if err != nil {
		return snap, errdefs.New(errdefs.ErrNotFound, "list them with `pyro workspace snapshot list`", "snapshot %q not found", name)
	}
	if len(b) > 64<<10 || json.Unmarshal(b, &snap) != nil {
		return Snapshot{}, errdefs.New(errdefs.ErrFailedPrecondition, "delete it, or restore another snapshot", "snapshot %q has a damaged record", name)
	}
	if err := checkRecord(name, snap); err != nil {
		return Snapshot{}, err
	}
	return snap, nil
}

// Open verifies snapshot name against its recorded sha256 and returns its
// tar stream. A damaged snapshot is never restored.
func (s Snapshots) Open(name string) (*os.File, error) {
	snap, err := s.Get(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(s.tarPath(name))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "", "snapshot %q is missing its data", name)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		f.Close()
		return nil, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != snap.SHA256 {
		f.Close()
		// Both are 64 hex digits here (checkRecord).
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "restore another snapshot", "snapshot %q is damaged (sha256 %s, recorded %s)", name, got[:12], snap.SHA256[:12])
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Delete removes a named snapshot; the baseline cannot be deleted. A
// damaged record can be deleted (that is how it goes away), an invalid
// name never reaches the file system.
func (s Snapshots) Delete(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if name == Baseline {
		return errdefs.New(errdefs.ErrFailedPrecondition, "the baseline is what diff and reset compare against", "the baseline snapshot cannot be deleted")
	}
	if _, err := s.Get(name); errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	// The record goes first: a crash between the two leaves data no
	// record names (invisible), never a record without its data.
	if err := os.Remove(s.metaPath(name)); err != nil {
		return err
	}
	for _, p := range []string{s.tarPath(name), s.imgPath(name), s.layerPath(name)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// HistoryEntry is one command run in a workspace.
type HistoryEntry struct {
	Seq             int       `json:"seq"` // 1-based position in the history
	Command         []string  `json:"command"`
	ExitCode        int       `json:"exit_code"`
	DurationMS      int64     `json:"duration_ms"`
	StartedAt       time.Time `json:"started_at"`
	TimedOut        bool      `json:"timed_out,omitempty"`
	Stdout          string    `json:"stdout"`
	Stderr          string    `json:"stderr"`
	OutputTruncated bool      `json:"output_truncated,omitempty"`
	// NetworkDenials: what the network policy refused during the command.
	NetworkDenials []netpolicy.Denial `json:"network_denials,omitempty"`
}

// HistoryExcerpt bounds the output kept per command in the history.
const HistoryExcerpt = 8 << 10

// excerpt keeps the last n bytes of s, cut at a UTF-8 boundary.
func excerpt(s string, n int) (string, bool) {
	if len(s) <= n {
		return s, false
	}
	s = s[len(s)-n:]
	for i := 0; i < 4 && i < len(s); i++ {
		if s[i]&0xC0 != 0x80 {
			return s[i:], true
		}
	}
	return s, true
}

// AppendHistory adds one entry to the history file. Entries are numbered
// when read (their line number), so appending never reads the history.
func AppendHistory(path string, e HistoryEntry) error {
	e.Seq = 0
	e.Command = capWords(e.Command, int(hostres.Load().HistoryLineBytes))
	var t1, t2 bool
	e.Stdout, t1 = excerpt(e.Stdout, HistoryExcerpt)
	e.Stderr, t2 = excerpt(e.Stderr, HistoryExcerpt)
	e.OutputTruncated = e.OutputTruncated || t1 || t2
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(append(b, '\n')); err != nil {
		return err
	}
	return f.Sync()
}

// capWords keeps words up to max bytes in all, the last one cut, and marks
// the cut with "...".
func capWords(words []string, max int) []string {
	total := 0
	for i, w := range words {
		if total+len(w) > max {
			out := append([]string(nil), words[:i]...)
			return append(out, w[:max-total]+"...")
		}
		total += len(w)
	}
	return words
}

// ReadHistory returns every entry, oldest first.
func ReadHistory(path string) ([]HistoryEntry, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return []HistoryEntry{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := []HistoryEntry{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var e HistoryEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			e.Seq = len(out) + 1
			out = append(out, e)
		}
	}
	return out, sc.Err()
}
