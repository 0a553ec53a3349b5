package workspace

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// describeTree lists what mke2fs -d reads of a tree: per entry its type,
// permissions, owner, modification time, content or target, and extended
// attributes.
func describeTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		what := ""
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			what = "file " + hex.EncodeToString(sum[:8])
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			what = "symlink " + target
		case unix.S_IFDIR:
			what = "dir"
		default:
			what = fmt.Sprintf("other %o", st.Mode&unix.S_IFMT)
		}
		n, _ := unix.Llistxattr(p, nil)
		mtime := st.Mtim.Nano()
		if rel == "." {
			mtime = 0 // the staging root is the caller's
		}
		out = append(out, fmt.Sprintf("%s %s mode=%o uid=%d gid=%d mtime=%d xattrs=%d", rel, what, st.Mode&0o7777, st.Uid, st.Gid, mtime, n))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// seedForStaging makes a tree with what staging must treat differently:
// plain files (linked), a file with a second link and one with an extended
// attribute (copied), setuid and read-only modes, symlinks, a fifo.
func seedForStaging(t *testing.T, src string) (xattr bool) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "sub", "deep"), 0o755))
	must(os.WriteFile(filepath.Join(src, "a.txt"), []byte("alpha"), 0o644))
	must(os.WriteFile(filepath.Join(src, "sub", "deep", "b.bin"), make([]byte, 70000), 0o600))
	must(os.WriteFile(filepath.Join(src, "tool"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Chmod(filepath.Join(src, "tool"), 0o755|os.ModeSetuid))
	must(os.WriteFile(filepath.Join(src, "twice"), []byte("two links"), 0o644))
	must(os.Link(filepath.Join(src, "twice"), filepath.Join(src, "sub", "twice-link")))
	must(os.WriteFile(filepath.Join(src, "attr"), []byte("has an xattr"), 0o644))
	xattr = unix.Setxattr(filepath.Join(src, "attr"), "user.pyro", []byte("x"), 0) == nil
	must(os.Symlink("a.txt", filepath.Join(src, "rel-link")))
	must(os.Symlink("/etc/passwd", filepath.Join(src, "sub", "abs-link")))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o644))
	must(os.MkdirAll(filepath.Join(src, "ro"), 0o755))
	must(os.WriteFile(filepath.Join(src, "ro", "c"), []byte("c"), 0o444))
	must(os.Chmod(filepath.Join(src, "ro"), 0o555))
	old := time.Date(2020, 1, 2, 3, 4, 5, 123456789, time.UTC)
	for _, p := range []string{"a.txt", "sub/deep/b.bin", "sub/deep", "ro"} {
		must(os.Chtimes(filepath.Join(src, p), old, old))
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(src, "ro"), 0o755) })
	return xattr
}

// sameAsTar stages src at staged and checks the tree and counts against
// TarDir | ExtractTar of src.
func sameAsTar(t *testing.T, src, staged string) {
	t.Helper()
	viaTar := filepath.Join(t.TempDir(), "tar")
	r, mode, err := OpenSource(src)
	if err != nil || mode != "directory" {
		t.Fatal(mode, err)
	}
	want, err := tarutil.ExtractTar(r, viaTar)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := stageDir(context.Background(), src, staged, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.Files != want.Files || got.Dirs != want.Dirs || got.Bytes != want.Bytes {
		t.Fatalf("staged %+v, extracted %+v", got, want)
	}
	os.Chmod(viaTar, 0o755)
	a, b := describeTree(t, viaTar), describeTree(t, staged)
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Fatalf("trees differ:\n-- tar | extract:\n%s\n-- staged:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
}

// Staging a directory makes the tree that TarDir | ExtractTar makes, with
// hard links only where a link reads as that copy.
func TestStageDirMatchesTarAndExtract(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	xattr := seedForStaging(t, src)

	staged := filepath.Join(t.TempDir(), "staged")
	if err := os.Mkdir(staged, 0o755); err != nil {
		t.Fatal(err)
	}
	sameAsTar(t, src, staged)
	// Same file system here: plain files are links, the others copies.
	if inode(t, filepath.Join(src, "a.txt")) != inode(t, filepath.Join(staged, "a.txt")) {
		t.Error("a plain file was copied, not linked")
	}
	if inode(t, filepath.Join(src, "twice")) == inode(t, filepath.Join(staged, "twice")) {
		t.Error("a file with two links was linked: mke2fs would join it with its other name")
	}
	if xattr && inode(t, filepath.Join(src, "attr")) == inode(t, filepath.Join(staged, "attr")) {
		t.Error("a file with an extended attribute was linked: the image would carry the attribute")
	}
}

// Across file systems staging copies.
func TestStageDirCopiesAcrossFileSystems(t *testing.T) {
	shm, err := os.MkdirTemp("/dev/shm", "pyro-stage-")
	if err != nil {
		t.Skip("no /dev/shm")
	}
	defer os.RemoveAll(shm)
	var a, b unix.Statfs_t
	dest := t.TempDir()
	if unix.Statfs(shm, &a) != nil || unix.Statfs(dest, &b) != nil || a.Fsid == b.Fsid {
		t.Skip("/dev/shm is on the test directory's file system")
	}
	src := filepath.Join(shm, "src")
	seedForStaging(t, src)
	sameAsTar(t, src, dest)
	if inode(t, filepath.Join(src, "a.txt")) == inode(t, filepath.Join(dest, "a.txt")) {
		t.Fatal("linked across file systems?")
	}
}

// A seed file written to while its baseline is built (staged as a hard
// link, so the image reads the caller's file) makes the build stage it
// again as a copy: the recorded bytes are the image's, not the ones
// counted before the change.
func TestBuildBaseSeedChangedDuringBuild(t *testing.T) {
	needE2fs(t)
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed")
	os.Mkdir(seed, 0o755)
	a := filepath.Join(seed, "a.txt")
	os.WriteFile(a, []byte("hi"), 0o644)
	images := 0
	afterStage = func() {
		if images++; images == 1 {
			f, err := os.OpenFile(a, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Error(err)
				return
			}
			f.WriteString(" there")
			f.Close()
		}
	}
	defer func() { afterStage = func() {} }()
	img := filepath.Join(dir, BaseFile)
	st, err := buildSeedBase(t, seed, img)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("debugfs", "-R", "cat /a.txt", img).Output()
	if err != nil || string(out) != "hi there" || st.Bytes != int64(len(out)) || images != 2 {
		t.Fatalf("image holds %q (%v), recorded %d bytes, %d images", out, err, st.Bytes, images)
	}
	// Unchanged, one image is enough.
	images = 5
	if st, err := buildSeedBase(t, seed, filepath.Join(dir, "again.ext4")); err != nil || st.Bytes != 8 || images != 6 {
		t.Fatalf("%+v %v, %d images", st, err, images)
	}
}

// buildSeedBase prepares the baseline image img and builds it from the seed
// directory seed.
func buildSeedBase(t *testing.T, seed, img string) (tarutil.Stats, error) {
	t.Helper()
	r, _, err := OpenSource(seed)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := PrepareBase(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	return BuildBase(context.Background(), img, r, 64<<20)
}
