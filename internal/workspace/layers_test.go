package workspace

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pyro-mcp/pyro/internal/asnobody"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// sparseImage writes a sparse file with data at a few offsets.
func sparseImage(t *testing.T, p string, chunks map[int64]string) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	for off, s := range chunks {
		if _, err := f.WriteAt(bytes.Repeat([]byte(s), 4096), off); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCopyImageKeepsContentAndDigest(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	sparseImage(t, src, map[int64]string{0: "a", 8 << 20: "b", 60 << 20: "c"})
	sum, n, err := CopyImage(src, filepath.Join(dir, "dst.img"), 0, "test", "")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(src)
	got, _ := os.ReadFile(filepath.Join(dir, "dst.img"))
	if !bytes.Equal(got, want) {
		t.Fatal("copy differs")
	}
	if n >= 64<<20 {
		t.Fatalf("copied %d bytes of a sparse image", n)
	}
	if d, _, _ := ImageDigest(filepath.Join(dir, "dst.img")); d != sum {
		t.Fatalf("digest of the copy %s, of the source %s", d, sum)
	}
	// Over the cap: refused, dst untouched.
	if _, _, err := CopyImage(src, filepath.Join(dir, "dst.img"), 4096, "test", "X"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("over the cap: %v", err)
	}
	if got2, _ := os.ReadFile(filepath.Join(dir, "dst.img")); !bytes.Equal(got2, want) {
		t.Fatal("a refused copy changed dst")
	}
}

func TestLayeredSnapshotIsVerified(t *testing.T) {
	dir := t.TempDir()
	upper := filepath.Join(dir, "upper.img")
	sparseImage(t, upper, map[int64]string{4096: "u"})
	base := filepath.Join(dir, "base.img")
	sparseImage(t, base, map[int64]string{0: "b"})
	s := Snapshots{Dir: filepath.Join(dir, "snapshots")}
	if _, err := s.SaveBase(base); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SaveUpper("s1", upper); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SaveUpper("s1", upper); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second s1: %v", err)
	}
	if p, err := s.VerifyLayered(Baseline, base); err != nil || p != "" {
		t.Fatalf("baseline: %q %v", p, err)
	}
	p, err := s.VerifyLayered("s1", base)
	if err != nil || p == "" {
		t.Fatalf("s1: %q %v", p, err)
	}
	// A changed byte in the stored layer, or in the baseline, is refused.
	f, _ := os.OpenFile(p, os.O_WRONLY, 0)
	f.WriteAt([]byte("X"), 4100)
	f.Close()
	if _, err := s.VerifyLayered("s1", base); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("tampered layer restored: %v", err)
	}
	f, _ = os.OpenFile(base, os.O_WRONLY, 0)
	f.WriteAt([]byte("X"), 10)
	f.Close()
	if _, err := s.VerifyLayered(Baseline, base); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("tampered baseline used: %v", err)
	}
	if err := s.Delete("s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("layer left after delete: %v", err)
	}
}

func TestBuildBaseUnpacksOnHost(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/mke2fs"); err != nil {
		t.Skip("no mke2fs")
	}
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed")
	os.MkdirAll(filepath.Join(seed, "sub"), 0o755)
	os.WriteFile(filepath.Join(seed, "a.txt"), []byte("hi"), 0o644)
	os.WriteFile(filepath.Join(seed, "sub", "b.txt"), []byte("yo"), 0o644)
	r, _, err := OpenSource(seed)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	img := filepath.Join(dir, BaseFile)
	if err := PrepareBase(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	// A reader that opened the image before the build (QEMU) sees the
	// built image through its descriptor: it is written in place.
	early, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	st, err := BuildBase(context.Background(), img, r, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if BasePending(img) {
		t.Fatal("the image is still marked pending after its build")
	}
	sb := make([]byte, 2)
	if _, err := early.ReadAt(sb, 1024+56); err != nil || sb[0] != 0x53 || sb[1] != 0xef {
		t.Fatalf("no ext4 superblock through the early descriptor: %x %v", sb, err)
	}
	if fi, _ := early.Stat(); fi.Size() != 64<<20 {
		t.Fatalf("image size %d", fi.Size())
	}
	if st.Files != 2 || st.Bytes != 4 {
		t.Fatalf("stats %+v", st)
	}
	idx, err := ReadBaseIndex(filepath.Join(dir, BaseIndexFile))
	if err != nil || idx.Has("sub/b.txt") != "file" || idx.Has("sub") != "dir" || idx.Has("lost+found") != "" {
		t.Fatalf("index %+v %v", idx, err)
	}
	// No private unpack directory is left behind.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".seed-") {
			t.Fatalf("left %s", e.Name())
		}
	}
}

func TestCompareManifests(t *testing.T) {
	base := BaseIndex{kinds: map[string]string{"a.txt": "file", "d": "dir", "d/x": "file", "d/y": "file", "keep": "file"}}
	base.names = []string{"a.txt", "d", "d/x", "d/y", "keep"}
	m := func(es ...agentapi.LayerEntry) agentapi.LayerManifest { return agentapi.LayerManifest{Entries: es} }
	file := func(p string, ct int64) agentapi.LayerEntry {
		return agentapi.LayerEntry{Path: p, Kind: "file", Size: 1, CtimeNS: ct, Ino: 7}
	}
	then := m(file("a.txt", 1), file("new1", 1))
	now := m(file("a.txt", 2), file("new1", 1), file("new2", 5),
		agentapi.LayerEntry{Path: "d", Kind: "whiteout"})
	d := CompareManifests(then, now, base)
	if strings.Join(d.Added, ",") != "new2" || strings.Join(d.Modified, ",") != "a.txt" || strings.Join(d.Deleted, ",") != "d,d/x,d/y" {
		t.Fatalf("%+v", d)
	}
	// An opaque directory hides the baseline's entries below it.
	now2 := m(agentapi.LayerEntry{Path: "d", Kind: "dir", Opaque: true}, file("d/z", 3))
	d = CompareManifests(m(), now2, base)
	if strings.Join(d.Added, ",") != "d/z" || strings.Join(d.Deleted, ",") != "d/x,d/y" || len(d.Modified) != 0 {
		t.Fatalf("opaque: %+v", d)
	}
	if d := CompareManifests(now, now, base); len(d.Changes) != 0 {
		t.Fatalf("same manifests differ: %+v", d)
	}
}

func TestCheckpointsTakePruneDrop(t *testing.T) {
	dir := t.TempDir()
	upper := filepath.Join(dir, "upper.img")
	sparseImage(t, upper, map[int64]string{0: "u"})
	t.Setenv(CheckpointCountEnv, "3")
	c := Checkpoints{Dir: filepath.Join(dir, CheckpointsDir)}
	for i := 0; i < 5; i++ {
		if _, err := c.Take(upper, agentapi.LayerManifest{}, "exec: step"); err != nil {
			t.Fatal(err)
		}
	}
	list, err := c.List()
	if err != nil || len(list) != 3 || list[0].Number != 3 || list[2].Number != 5 {
		t.Fatalf("after pruning: %+v %v", list, err)
	}
	if _, err := c.Verify(4); err != nil {
		t.Fatal(err)
	}
	if err := c.DropFrom(4); err != nil || c.Last() != 3 {
		t.Fatalf("drop: %v last %d", err, c.Last())
	}
	// Numbers are not reused after an undo.
	cp, err := c.Take(upper, agentapi.LayerManifest{}, "exec: again")
	if err != nil || cp.Number != 6 {
		t.Fatalf("next checkpoint %+v %v", cp, err)
	}
}

// A seed with a read-only directory (a Go module cache, say) leaves no
// staging tree behind, so the workspace directory can be removed, and
// the seed's file (hard-linked while staged) has its one link again.
// Root unlinks in read-only directories: as root the test reruns itself
// as nobody.
func TestBuildBaseRemovesReadOnlyStaging(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/mke2fs"); err != nil {
		t.Skip("no mke2fs")
	}
	if asnobody.Rerun(t) {
		return
	}
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed")
	ro := filepath.Join(seed, "ro")
	os.MkdirAll(ro, 0o755)
	os.WriteFile(filepath.Join(ro, "f"), []byte("hi"), 0o644)
	os.Chmod(ro, 0o555)
	defer os.Chmod(ro, 0o755)
	ws := filepath.Join(dir, "ws")
	os.Mkdir(ws, 0o700)
	if _, err := buildSeedBase(t, seed, filepath.Join(ws, BaseFile)); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(ws)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".seed-") {
			t.Errorf("left %s", e.Name())
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(ro, "f"), &st); err != nil || st.Nlink != 1 {
		t.Errorf("the seed's file has %d links after the build: %v", st.Nlink, err)
	}
	if err := os.RemoveAll(ws); err != nil {
		t.Errorf("the workspace directory cannot be removed: %v", err)
	}
}
