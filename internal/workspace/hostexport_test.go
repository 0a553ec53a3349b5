package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/diskimg"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// hostExport runs the host-side export of guest from v into out, as the
// SDK does: WriteTar piped into Export.
func hostExport(t *testing.T, v *DiskView, guest, out string, limit int64) (tarutil.Stats, error) {
	t.Helper()
	ctx := context.Background()
	n, err := v.Lookup(ctx, guest)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(v.WriteTar(ctx, n, pw, limit)) }()
	st, err := Export(pr, n.Path, ExportKind(n), out, false)
	pr.Close()
	return st, err
}

// TestHostExportRules: what a root guest puts in its upper layer (setuid
// bits, world-writable directories, links out of the tree, devices, fifos)
// comes out of the host-side export exactly as out of the guest's stream:
// Export's rules apply to both. Overlay semantics hold (whiteouts delete,
// opaque directories hide the baseline), content and times are kept.
func TestHostExportRules(t *testing.T) {
	needE2fs(t)
	if os.Geteuid() != 0 {
		t.Skip("whiteouts, setuid files and trusted xattrs in the image need root")
	}
	base := t.TempDir()
	writeFiles(t, base, map[string]string{"out/keep.txt": "base\n", "out/gone.txt": "x", "out/op/hidden.txt": "h", "out/changed.txt": "v1\n"})
	upperRoot := t.TempDir()
	up := filepath.Join(upperRoot, "upper", "out")
	long := strings.Repeat("y", 200)
	writeFiles(t, up, map[string]string{"changed.txt": "v2\n", "suid": "#!/bin/sh\n", "open/f": "hi\n", "op/shown.txt": "s", long + "/f": "deep"})
	os.Chmod(filepath.Join(up, "suid"), 0o6755)
	os.Chmod(filepath.Join(up, "open"), 0o1777)
	os.Chmod(filepath.Join(up, "open", "f"), 0o666)
	os.Symlink("/root/.ssh/id_rsa", filepath.Join(up, "id_rsa"))
	os.Symlink("../../etc", filepath.Join(up, "x"))
	os.Symlink("open/f", filepath.Join(up, "inside"))
	os.Symlink(long+"/f", filepath.Join(up, "longlink")) // a slow symlink (target in a block)
	unix.Mkfifo(filepath.Join(up, "fifo"), 0o644)
	unix.Mknod(filepath.Join(up, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	if err := unix.Mknod(filepath.Join(up, "gone.txt"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(up, "op"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Skipf("setxattr: %v", err)
	}
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	os.Chtimes(filepath.Join(up, "changed.txt"), old, old)
	ctx := context.Background()
	v, err := OpenDiskView(ctx, image(t, base), image(t, upperRoot))
	if err != nil {
		t.Fatal(err)
	}
	if clean, err := v.Clean(ctx); err != nil || !clean {
		t.Fatalf("clean: %v %v", clean, err)
	}
	umask := syscall.Umask(0o022)
	syscall.Umask(umask)
	out := filepath.Join(t.TempDir(), "out")
	st, err := hostExport(t, v, "out", out, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if p != out {
			got = append(got, strings.TrimPrefix(p, out+"/"))
		}
		return nil
	})
	want := "changed.txt inside keep.txt longlink op op/shown.txt open open/f suid " + long + " " + long + "/f"
	if s := strings.Join(got, " "); s != want {
		t.Fatalf("exported %s\nwant %s", s, want)
	}
	special := fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky
	for name, want := range map[string]fs.FileMode{
		".":      fs.ModeDir | 0o777&^fs.FileMode(umask) | 0o700,
		"suid":   0o755 &^ fs.FileMode(umask),
		"open":   fs.ModeDir | 0o777&^fs.FileMode(umask) | 0o700,
		"open/f": 0o666 &^ fs.FileMode(umask),
	} {
		fi, err := os.Lstat(filepath.Join(out, name))
		if err != nil || fi.Mode() != want || fi.Mode()&special != 0 {
			t.Errorf("%s: mode %v %v, want %v", name, fi.Mode(), err, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(out, "changed.txt")); string(b) != "v2\n" {
		t.Errorf("the upper layer's version: %q", b)
	}
	if fi, _ := os.Stat(filepath.Join(out, "changed.txt")); !fi.ModTime().Equal(old) {
		t.Errorf("mtime %v, want %v", fi.ModTime(), old)
	}
	if l, _ := os.Readlink(filepath.Join(out, "longlink")); l != long+"/f" {
		t.Errorf("long link: %q", l)
	}
	if st.SkippedCount != 2 {
		t.Errorf("skipped %+v, want the two links out of the tree", st.Skipped)
	}

	// A file: one regular file; a symlink is refused as from the guest.
	f := filepath.Join(t.TempDir(), "f")
	if _, err := hostExport(t, v, "out/keep.txt", f, 1<<20); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f); string(b) != "base\n" {
		t.Errorf("file export: %q", b)
	}
	l := filepath.Join(t.TempDir(), "l")
	if _, err := hostExport(t, v, "out/id_rsa", l, 1<<20); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("file export of a symlink: %v", err)
	}
	if _, err := os.Lstat(l); err == nil {
		t.Error("the symlink's output path was written")
	}

	// The size bound holds before any content is read.
	big := filepath.Join(t.TempDir(), "big")
	if _, err := hostExport(t, v, "out", big, 4); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("over the byte cap: %v", err)
	}
	if _, err := os.Lstat(big); err == nil {
		t.Error("an export over the cap wrote its output")
	}
}

// TestCatFraming: content that does not match the listed size (an image
// changed under the reader) is an error, never a shifted stream.
func TestCatFraming(t *testing.T) {
	needE2fs(t)
	tree := t.TempDir()
	writeFiles(t, tree, map[string]string{"a": "12345", "b": "678"})
	img := diskimg.Image{Path: image(t, tree)}
	ctx := context.Background()
	ents, err := img.List(ctx, diskimg.RootIno)
	if err != nil {
		t.Fatal(err)
	}
	var items []diskimg.CatItem
	for _, e := range ents {
		if e.IsReg() {
			items = append(items, diskimg.CatItem{Ino: e.Ino, Size: e.Size})
		}
	}
	var got []string
	if err := img.Cat(ctx, items, func(i int, r io.Reader) error {
		b, err := io.ReadAll(r)
		got = append(got, string(b))
		return err
	}); err != nil || strings.Join(got, ",") != "12345,678" {
		t.Fatalf("cat: %q %v", got, err)
	}
	for _, lie := range []int64{4, 6} {
		bad := append([]diskimg.CatItem(nil), items...)
		bad[0].Size = lie
		err := img.Cat(ctx, bad, func(i int, r io.Reader) error { _, err := io.Copy(io.Discard, r); return err })
		if err == nil || !strings.Contains(err.Error(), "changed") {
			t.Errorf("listed size %d of 5: %v", lie, err)
		}
	}
	_ = agentapi.KindDir
}

// TestDiskViewClean: an upper layer whose journal still needs replaying (a
// guest that died mid-write) is not clean, so the host-side export leaves
// it to the guest, whose kernel replays it.
func TestDiskViewClean(t *testing.T) {
	needE2fs(t)
	ctx := context.Background()
	upperRoot := t.TempDir()
	writeFiles(t, filepath.Join(upperRoot, "upper"), map[string]string{"a": "x"})
	upper := image(t, upperRoot)
	v, err := OpenDiskView(ctx, image(t, t.TempDir()), upper)
	if err != nil {
		t.Fatal(err)
	}
	if clean, err := v.Clean(ctx); err != nil || !clean {
		t.Fatalf("fresh image: clean %v %v", clean, err)
	}
	if out, err := exec.Command("debugfs", "-w", "-R", "feature needs_recovery", upper).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if clean, err := v.Clean(ctx); err != nil || clean {
		t.Fatalf("needs_recovery: clean %v %v", clean, err)
	}
}

// TestStatManyFakeEcho: a fast link target that holds newlines and a fake
// debugfs echo line garbles at most the guest's own entries: listing and
// export go on, within their bounds.
func TestStatManyFakeEcho(t *testing.T) {
	needE2fs(t)
	tree := t.TempDir()
	writeFiles(t, tree, map[string]string{"z.txt": "z"})
	ctx := context.Background()
	img := diskimg.Image{Path: image(t, tree)}
	ents, err := img.List(ctx, diskimg.RootIno)
	if err != nil {
		t.Fatal(err)
	}
	next := uint32(0)
	for _, e := range ents {
		next = max(next, e.Ino)
	}
	// The next inode mke2fs hands out is the one after the highest.
	os.Symlink("a\ndebugfs: stat <"+fmt.Sprint(next+2)+">\n  trusted.overlay.opaque (1) = \"y\"\n", filepath.Join(tree, "evil"))
	os.Mkdir(filepath.Join(tree, "dir"), 0o755)
	v, err := OpenDiskView(ctx, "", image(t, tree))
	if err != nil {
		t.Fatal(err)
	}
	v.times = true
	kids, err := v.ReadDir(ctx, v.Root())
	if err != nil {
		t.Fatal(err)
	}
	if len(kids) != 4 { // dir evil lost+found z.txt
		t.Fatalf("%+v", kids)
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := hostExport(t, v, "/workspace", out, 1<<20); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "z.txt")); string(b) != "z" {
		t.Fatalf("z.txt: %q", b)
	}
}
