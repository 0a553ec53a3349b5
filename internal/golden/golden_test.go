package golden

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testKey() Key {
	return Key{Format: Format, Environment: "debian:12", EnvDigest: "sha256:ab", VCPUs: 1, MemMiB: 1, Network: "off",
		Backend: "qemu", VMM: "qemu-system-x86_64 tcg", Cmdline: "quiet", Initramfs: "cd"}
}

// publish builds and publishes a snapshot whose state is state.
func publish(t *testing.T, s *Store, k Key, state string) Snapshot {
	t.Helper()
	b, _, err := s.Begin(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.StatePath(), []byte(state), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := b.Publish()
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func TestPublishThenLookup(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), DirName))
	k := testKey()
	if _, err := s.Lookup(k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup before build: %v", err)
	}
	snap := publish(t, s, k, "device state")
	got, err := s.Lookup(k)
	if err != nil {
		t.Fatal(err)
	}
	if got.Dir != snap.Dir || got.Manifest.State.Size != int64(len("device state")) {
		t.Fatalf("lookup = %+v", got)
	}
	other := k
	other.MemMiB = 2
	if _, err := s.Lookup(other); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another key found %v", err)
	}
	// A second Begin for a published key hands back the snapshot.
	b, existing, err := s.Begin(context.Background(), k)
	if err != nil || b != nil || existing.Dir != snap.Dir {
		t.Fatalf("begin after publish: %v %v %v", b, existing, err)
	}
}

func TestDamageIsDetected(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		damage     func(Snapshot) error
	}{
		{"state truncated", "bytes", func(s Snapshot) error { return os.Truncate(s.StatePath(), 3) }},
		{"state written in place", "written", func(s Snapshot) error {
			f, err := os.OpenFile(s.StatePath(), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte("x"), 3)
			return err
		}},
		{"state replaced", "written", func(s Snapshot) error {
			// Same size, new inode: as if another file were moved in.
			tmp := s.StatePath() + ".new"
			if err := os.WriteFile(tmp, []byte("device stat3"), 0o644); err != nil {
				return err
			}
			return os.Rename(tmp, s.StatePath())
		}},
		{"state missing", "state file", func(s Snapshot) error { return os.Remove(s.StatePath()) }},
		{"old format", "format", func(s Snapshot) error {
			b, _ := os.ReadFile(filepath.Join(s.Dir, ManifestFile))
			m := strings.Replace(string(b), `"format": 2`, `"format": 1`, 1)
			return os.WriteFile(filepath.Join(s.Dir, ManifestFile), []byte(m), 0o644)
		}},
		{"manifest garbage", "manifest", func(s Snapshot) error {
			return os.WriteFile(filepath.Join(s.Dir, ManifestFile), []byte("{"), 0o644)
		}},
		{"manifest of another key", "another configuration", func(s Snapshot) error {
			b, _ := os.ReadFile(filepath.Join(s.Dir, ManifestFile))
			// Rewrite the key but keep the id: as if copied over.
			m := strings.Replace(string(b), `"vcpu_count": 1`, `"vcpu_count": 2`, 1)
			return os.WriteFile(filepath.Join(s.Dir, ManifestFile), []byte(m), 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(filepath.Join(t.TempDir(), DirName))
			snap := publish(t, s, testKey(), "device state")
			if err := tc.damage(snap); err != nil {
				t.Fatal(err)
			}
			_, err := s.Lookup(testKey())
			var bad *Invalid
			if !errors.As(err, &bad) {
				t.Fatalf("lookup of a damaged snapshot: %v", err)
			}
			if !strings.Contains(bad.Reason, tc.want) && !strings.Contains(bad.Reason, "id does not match") {
				t.Errorf("reason %q, want it to mention %q", bad.Reason, tc.want)
			}
			if err := s.Discard(bad.Dir); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Lookup(testKey()); !errors.Is(err, ErrNotFound) {
				t.Fatalf("after discard: %v", err)
			}
		})
	}
}

// A build that fails before Publish (a full disk while saving, a crash)
// leaves nothing a Lookup would use, and List reports the leftover of a
// crashed one as partial so prune removes it.
func TestFailedBuildLeavesNoSnapshot(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), DirName))
	k := testKey()
	b, _, err := s.Begin(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	// The state file was never written (the save failed): Publish refuses.
	if _, err := b.Publish(); err == nil {
		t.Fatal("publish without a state file succeeded")
	}
	if _, err := s.Lookup(k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after a failed publish: %v", err)
	}
	if _, err := os.Stat(b.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("build directory left behind: %v", err)
	}
	// A crashed build (no Abort) is listed as partial and pruned.
	b2, _, err := s.Begin(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	b2.lock.Close()
	list, err := s.List()
	if err != nil || len(list) != 1 || !list[0].Partial {
		t.Fatalf("list = %+v, %v", list, err)
	}
	if _, err := s.Lookup(k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a partial build was found: %v", err)
	}
	removed, err := s.RemoveAll()
	if err != nil || len(removed) != 1 {
		t.Fatalf("remove all = %+v, %v", removed, err)
	}
}

// An empty state file (a save that wrote nothing) is never published.
func TestEmptyStateRefused(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), DirName))
	b, _, err := s.Begin(context.Background(), testKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.StatePath(), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("publish of an empty state: %v", err)
	}
}

// Old snapshots (other agent binaries, other QEMUs) do not pile up.
func TestPublishKeepsAtMostMax(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), DirName))
	for i := 0; i < MaxSnapshots+3; i++ {
		k := testKey()
		k.Initramfs = fmt.Sprint(i)
		publish(t, s, k, "state")
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != MaxSnapshots {
		t.Fatalf("%d snapshots kept, want %d", len(list), MaxSnapshots)
	}
	k := testKey()
	k.Initramfs = fmt.Sprint(MaxSnapshots + 2)
	if _, err := s.Lookup(k); err != nil {
		t.Fatalf("the newest snapshot is gone: %v", err)
	}
}

// The trim drops the least recently used snapshot, not the one built
// first and still in use.
func TestPublishKeepsRecentlyUsed(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), DirName))
	keys := make([]Key, MaxSnapshots+1)
	for i := range keys {
		keys[i] = testKey()
		keys[i].Initramfs = fmt.Sprint(i)
	}
	for i, k := range keys[:MaxSnapshots] {
		snap := publish(t, s, k, "state")
		old := time.Now().Add(-time.Duration(MaxSnapshots-i) * time.Hour)
		if err := os.Chtimes(snap.Dir, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Lookup(keys[0]); err != nil { // built first, used now
		t.Fatal(err)
	}
	publish(t, s, keys[MaxSnapshots], "state")
	if _, err := s.Lookup(keys[0]); err != nil {
		t.Fatalf("the snapshot used last is gone: %v", err)
	}
	if _, err := s.Lookup(keys[1]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the least recently used snapshot: %v, want it gone", err)
	}
}

// TestMountedUpperGuarded: a mounted-workspace snapshot publishes only with
// its upper disk and baseline digest, and one whose upper disk was written
// after the save is not used (restored guests' caches hold its blocks).
func TestMountedUpperGuarded(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), DirName))
	k := testKey()
	k.MountedWorkspace, k.WorkspaceBytes = true, 1<<20
	b, _, err := s.Begin(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.StatePath(), []byte("state"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.UpperPath(), []byte("upper disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(); err == nil {
		t.Fatal("published without a baseline digest")
	}
	b, _, err = s.Begin(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(b.StatePath(), []byte("state"), 0o644)
	_ = os.WriteFile(b.UpperPath(), []byte("upper disk"), 0o644)
	b.BaseDigest = "sha256:base"
	snap, err := b.Publish()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Lookup(k); err != nil || got.Manifest.BaseDigest != "sha256:base" || got.UpperPath() != filepath.Join(snap.Dir, UpperFile) {
		t.Fatalf("lookup = %+v, %v", got, err)
	}
	f, err := os.OpenFile(snap.UpperPath(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteAt([]byte("X"), 0)
	f.Close()
	var bad *Invalid
	if _, err := s.Lookup(k); !errors.As(err, &bad) || !strings.Contains(bad.Reason, "upper disk") {
		t.Fatalf("lookup after the upper disk was written: %v", err)
	}
}

// TestKeyIDsUnchangedByMountedFields: keys without a mounted workspace
// keep the ids they had (snapshots already built stay usable).
func TestKeyIDsUnchangedByMountedFields(t *testing.T) {
	b, _ := json.Marshal(testKey())
	if strings.Contains(string(b), "mounted") || strings.Contains(string(b), "workspace_bytes") {
		t.Fatalf("plain key encodes the mounted fields: %s", b)
	}
}
