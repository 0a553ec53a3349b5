package workspace

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// debugfsLs lists an image's root directory.
func debugfsLs(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "ls -l /", img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	return string(out)
}

// TestTemplatesCopyWhatMke2fsMakes: a workspace disk and an empty baseline
// copied from the cached templates are clean ext4 images of the asked size
// (the baseline without lost+found, its digest the image's own), and the
// second create copies the same template instead of making a new one.
func TestTemplatesCopyWhatMke2fsMakes(t *testing.T) {
	needE2fs(t)
	ctx := context.Background()
	dir := t.TempDir()
	tpl := Templates{Dir: filepath.Join(dir, "cache")}
	const size = 64 << 20
	ws := filepath.Join(dir, "ws")
	if err := os.Mkdir(ws, 0o700); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(ws, DiskFile)
	if err := tpl.EmptyDisk(ctx, disk, size); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(ws, BaseFile)
	sum, n, err := tpl.EmptyBase(ctx, base, size)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{disk, base} {
		st, err := os.Stat(img)
		if err != nil || st.Size() != size {
			t.Fatalf("%s: %v size %d", img, err, st.Size())
		}
		if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
			t.Fatalf("e2fsck %s: %v: %s", img, err, out)
		}
	}
	if ls := debugfsLs(t, base); strings.Contains(ls, "lost+found") {
		t.Fatalf("baseline keeps lost+found:\n%s", ls)
	}
	if ls := debugfsLs(t, disk); !strings.Contains(ls, "lost+found") {
		t.Fatalf("disk is not a fresh mke2fs image:\n%s", ls)
	}
	if want, wantN, err := ImageDigest(base); err != nil || want != sum || wantN != n || n == 0 {
		t.Fatalf("digest %s/%d, image's %s/%d (%v)", sum, n, want, wantN, err)
	}
	idx, err := ReadBaseIndex(filepath.Join(ws, BaseIndexFile))
	if err != nil || len(idx.names) != 0 {
		t.Fatalf("index %+v %v", idx, err)
	}

	// Reused: the template files are not made again.
	tplDisk, tplBase := tpl.path("disk", size), tpl.path("base", size)
	old := time.Now().Add(-time.Hour)
	for _, p := range []string{tplDisk, tplBase} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := tpl.EmptyDisk(ctx, filepath.Join(ws, "again.ext4"), size); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tpl.EmptyBase(ctx, filepath.Join(ws, "again-base.ext4"), size); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{tplDisk, tplBase} {
		if st, err := os.Stat(p); err != nil || !st.ModTime().Equal(old) {
			t.Fatalf("template %s was made again (%v)", p, err)
		}
	}
	// A template of the wrong size (a damaged cache) is made again.
	if err := os.Truncate(tplDisk, 4096); err != nil {
		t.Fatal(err)
	}
	if err := tpl.EmptyDisk(ctx, disk, size); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(disk); st.Size() != size {
		t.Fatalf("disk from a damaged template: %d bytes", st.Size())
	}
	// Nothing temporary is left in the cache.
	ents, _ := os.ReadDir(tpl.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Fatalf("left %s", e.Name())
		}
	}
}

// A fresh workspace's upper disk, copied unsynced at create, is the same
// image as the synced copy every other workspace gets.
func TestEmptyDiskUnsyncedSameImage(t *testing.T) {
	needE2fs(t)
	ctx := context.Background()
	dir := t.TempDir()
	tpl := Templates{Dir: filepath.Join(dir, "cache")}
	const size = 64 << 20
	synced, unsynced := filepath.Join(dir, "synced.ext4"), filepath.Join(dir, "unsynced.ext4")
	if err := tpl.EmptyDisk(ctx, synced, size); err != nil {
		t.Fatal(err)
	}
	if err := tpl.EmptyDiskUnsynced(ctx, unsynced, size); err != nil {
		t.Fatal(err)
	}
	want, _, err := ImageDigest(synced)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := ImageDigest(unsynced)
	if err != nil || got != want {
		t.Fatalf("unsynced copy %s (%v), synced %s", got, err, want)
	}
	if st, err := os.Stat(unsynced); err != nil || st.Size() != size {
		t.Fatalf("unsynced copy: %v", err)
	}
}
