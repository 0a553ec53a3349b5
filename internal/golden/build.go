package golden

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// Build is one snapshot being made: files go to a hidden temporary
// directory, which Publish renames into place. Exactly one of Publish or
// Abort ends it; Abort after Publish does nothing.
type Build struct {
	store   *Store
	key     Key
	Dir     string
	lock    *os.File
	started time.Time
	done    bool
	// BaseDigest is the digest of the baseline a MountedWorkspace
	// snapshot's guest had mounted; its upper disk is at UpperPath.
	BaseDigest string
}

// StatePath is where guest RAM and device state go.
func (b *Build) StatePath() string { return filepath.Join(b.Dir, StateFile) }

// UpperPath is where a MountedWorkspace snapshot's upper disk goes.
func (b *Build) UpperPath() string { return filepath.Join(b.Dir, UpperFile) }

// Begin takes the key's build lock (waiting for another builder until ctx
// ends) and makes the temporary directory. When another builder published the snapshot meanwhile, it
// returns that snapshot and a nil Build.
func (s *Store) Begin(ctx context.Context, k Key) (*Build, Snapshot, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, Snapshot{}, fmt.Errorf("create snapshot store: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(s.dir, ".lock-"+k.ID()), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, Snapshot{}, err
	}
	if err := fsutil.LockContext(ctx, lock); err != nil {
		lock.Close()
		if ctx.Err() != nil {
			return nil, Snapshot{}, fmt.Errorf("wait for another snapshot build: %w", err)
		}
		return nil, Snapshot{}, fmt.Errorf("lock snapshot build: %w", err)
	}
	if snap, err := s.Lookup(k); err == nil {
		lock.Close()
		return nil, snap, nil
	}
	dir, err := os.MkdirTemp(s.dir, tmpPrefix+k.ID()+"-")
	if err != nil {
		lock.Close()
		return nil, Snapshot{}, fmt.Errorf("create snapshot build directory: %w", err)
	}
	b := &Build{store: s, key: k, Dir: dir, lock: lock, started: time.Now()}
	return b, Snapshot{}, nil
}

// Abort removes the temporary directory and releases the lock.
func (b *Build) Abort() {
	if b.done {
		return
	}
	b.done = true
	_ = os.RemoveAll(b.Dir)
	b.lock.Close()
}

// Publish syncs the memory and state files, writes the manifest and
// renames the directory into place. Any failure (a full disk) aborts the
// build: nothing half-written is ever published.
func (b *Build) Publish() (Snapshot, error) {
	if b.done {
		return Snapshot{}, errors.New("snapshot build already ended")
	}
	snap, err := b.publish()
	if err != nil {
		b.Abort()
		return Snapshot{}, err
	}
	b.done = true
	b.lock.Close()
	b.store.clearFailed(b.key)
	return snap, nil
}

func (b *Build) publish() (Snapshot, error) {
	if err := fsutil.Sync(b.StatePath()); err != nil {
		return Snapshot{}, fmt.Errorf("sync %s: %w", StateFile, err)
	}
	st, err := StampOf(b.StatePath())
	if err != nil {
		return Snapshot{}, err
	}
	if st.Size == 0 {
		return Snapshot{}, errors.New("state file is empty")
	}
	m := Manifest{ID: b.key.ID(), Key: b.key, CreatedAt: time.Now().UTC(), State: st,
		BuildMS: time.Since(b.started).Milliseconds()}
	if b.key.MountedWorkspace {
		if b.BaseDigest == "" {
			return Snapshot{}, errors.New("mounted-workspace snapshot without its baseline digest")
		}
		if err := fsutil.Sync(b.UpperPath()); err != nil {
			return Snapshot{}, fmt.Errorf("sync %s: %w", UpperFile, err)
		}
		up, err := StampOf(b.UpperPath())
		if err != nil {
			return Snapshot{}, err
		}
		m.Upper, m.BaseDigest = &up, b.BaseDigest
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Snapshot{}, err
	}
	mp := filepath.Join(b.Dir, ManifestFile)
	if err := os.WriteFile(mp, append(data, '\n'), 0o644); err != nil {
		return Snapshot{}, fmt.Errorf("write snapshot manifest: %w", err)
	}
	if err := fsutil.Sync(mp); err != nil {
		return Snapshot{}, err
	}
	if err := fsutil.Sync(b.Dir); err != nil {
		return Snapshot{}, err
	}
	final := filepath.Join(b.store.dir, m.ID)
	// A stale or damaged one in the way (the caller holds the lock, so no
	// one else is publishing it).
	if _, err := os.Lstat(final); err == nil {
		if err := b.store.Discard(final); err != nil {
			return Snapshot{}, err
		}
	}
	if err := os.Rename(b.Dir, final); err != nil {
		return Snapshot{}, fmt.Errorf("publish snapshot: %w", err)
	}
	_ = fsutil.Sync(b.store.dir)
	b.store.trim(MaxSnapshots)
	return Snapshot{Dir: final, Manifest: m}, nil
}

// MaxSnapshots bounds the snapshots kept per environment: every new pyro
// binary or QEMU makes new keys, and the old snapshots (~130 MiB each)
// would otherwise pile up. The least recently used go first (a Lookup
// marks its use); a guest restored from one keeps its private mapping.
// They are not removed as soon as another key of the same configuration
// is built: another pyro binary (an older install, another checkout) may
// still start guests from its own key, and each rebuild costs a boot.
const MaxSnapshots = 8

// trim removes the least recently used (or published) snapshots beyond
// keep.
func (s *Store) trim(keep int) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	type aged struct {
		dir string
		mod time.Time
	}
	var all []aged
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if fi, err := e.Info(); err == nil {
			all = append(all, aged{filepath.Join(s.dir, e.Name()), fi.ModTime()})
		}
	}
	if len(all) <= keep {
		return
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mod.After(all[j].mod) })
	for _, a := range all[keep:] {
		_ = s.Discard(a.dir)
	}
}

func randSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// failedFor is how long a failed build keeps later starts of the same key
// from trying again (each try costs a boot).
const failedFor = 10 * time.Minute

// MarkFailed records that building k failed (why, for people).
func (s *Store) MarkFailed(k Key, why string) {
	if os.MkdirAll(s.dir, 0o755) == nil {
		_ = os.WriteFile(filepath.Join(s.dir, ".failed-"+k.ID()), []byte(why+"\n"), 0o644)
	}
}

// RecentlyFailed says whether a build of k failed within failedFor, and why.
func (s *Store) RecentlyFailed(k Key) (string, bool) {
	p := filepath.Join(s.dir, ".failed-"+k.ID())
	st, err := os.Stat(p)
	if err != nil || time.Since(st.ModTime()) > failedFor {
		return "", false
	}
	b, _ := readCapped(p, 4096)
	return string(b), true
}

// clearFailed forgets a failed build once one succeeded.
func (s *Store) clearFailed(k Key) { _ = os.Remove(filepath.Join(s.dir, ".failed-"+k.ID())) }
