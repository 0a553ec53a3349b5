package workspace

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/diskimg"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func needE2fs(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// image builds an ext4 image from tree with mke2fs -d.
func image(t *testing.T, tree string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "img.ext4")
	if err := mkfs(context.Background(), img, 64<<20, "-d", tree); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestDiskViewSingle(t *testing.T) {
	needE2fs(t)
	tree := t.TempDir()
	writeFiles(t, tree, map[string]string{"a.txt": "hello\n", "src/deep/b.go": "package b\n", "ctl\x1b[31m\nname": "x", `src/deep/"q" <2> #x`: "q"})
	os.Symlink("/etc/passwd", filepath.Join(tree, "escape"))
	os.Symlink("..", filepath.Join(tree, "src", "up"))
	os.Symlink(strings.Repeat("long/", 30), filepath.Join(tree, "src", "long")) // kept in a block, not the inode
	big, _ := os.Create(filepath.Join(tree, "huge"))
	big.Truncate(1 << 40) // a sparse 1 TiB file
	big.Close()
	os.Chmod(filepath.Join(tree, "a.txt"), 0o4755)
	ctx := context.Background()
	v, err := OpenDiskView(ctx, "", image(t, tree))
	if err != nil {
		t.Fatal(err)
	}
	kids, err := v.ReadDir(ctx, v.Root())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range kids {
		names = append(names, strings.TrimPrefix(k.Path, Root+"/")+":"+k.Type)
	}
	if got := strings.Join(names, " "); got != "a.txt:file ctl\x1b[31m\nname:file escape:symlink huge:file lost+found:dir src:dir" {
		t.Fatalf("%q", got)
	}
	n, err := v.Lookup(ctx, "a.txt")
	if err != nil || n.Size != 6 {
		t.Fatalf("%+v %v", n, err)
	}
	if b, trunc, err := v.Read(ctx, n, 3); err != nil || string(b) != "hel" || !trunc {
		t.Fatalf("read: %q %v %v", b, trunc, err)
	}
	if n, err := v.Lookup(ctx, "ctl\x1b[31m\nname"); err != nil || n.Type != "file" {
		t.Fatalf("control-char name: %+v %v", n, err)
	}
	// Reading a huge file stays bounded.
	n, _ = v.Lookup(ctx, "huge")
	if b, trunc, err := v.Read(ctx, n, 1024); err != nil || len(b) != 1024 || !trunc || n.Size != 1<<40 {
		t.Fatalf("huge: %d %v %v", len(b), trunc, err)
	}
	// Links are never followed.
	if _, err := v.Lookup(ctx, "src/up/a.txt"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("through a symlink: %v", err)
	}
	n, _ = v.Lookup(ctx, "escape")
	if _, _, err := v.Read(ctx, n, 10); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("read a symlink: %v", err)
	}
	if tg, err := v.Readlink(ctx, n); err != nil || tg != "/etc/passwd" {
		t.Fatalf("readlink: %q %v", tg, err)
	}
	for p, want := range map[string]error{"../etc": errdefs.ErrInvalidArgument, "nope": errdefs.ErrNotFound, "a.txt/x": errdefs.ErrInvalidArgument} {
		if _, err := v.Lookup(ctx, p); !errors.Is(err, want) {
			t.Errorf("lookup %s: %v", p, err)
		}
	}
	lookupsMatchWalk(t, v)
	// Export: our modes, no setuid bit, the huge sparse file refused by the cap.
	out := filepath.Join(t.TempDir(), "out.ext4")
	if _, err := ExportDisk(ctx, v, out, 1<<20); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("export past the cap: %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("a failed export left its output")
	}
	os.Remove(filepath.Join(tree, "huge"))
	v, _ = OpenDiskView(ctx, "", image(t, tree))
	st, err := ExportDisk(ctx, v, out, 1<<20)
	if err != nil || st.Files != 4 || st.Symlinks != 3 {
		t.Fatalf("export: %+v %v", st, err)
	}
	ev, _ := OpenDiskView(ctx, "", out)
	n, err = ev.Lookup(ctx, "a.txt")
	if err != nil || n.Perm != 0o755 {
		t.Fatalf("exported a.txt: %+v %v", n, err)
	}
	if b, _, _ := ev.Read(ctx, n, 100); string(b) != "hello\n" {
		t.Fatalf("exported content %q", b)
	}
}

// TestDiskViewLayered merges an upper layer over a baseline like
// overlayfs: whiteouts delete, an opaque directory hides the baseline's.
func TestDiskViewLayered(t *testing.T) {
	needE2fs(t)
	if os.Geteuid() != 0 {
		t.Skip("whiteouts (char 0:0) and trusted xattrs need root")
	}
	base := t.TempDir()
	writeFiles(t, base, map[string]string{"keep.txt": "base\n", "gone.txt": "x", "dir/old.txt": "old", "op/hidden.txt": "h", "changed.txt": "v1\n"})
	upperRoot := t.TempDir()
	up := filepath.Join(upperRoot, "upper")
	writeFiles(t, up, map[string]string{"changed.txt": "v2\n", "dir/new.txt": "new", "op/shown.txt": "s"})
	os.Mkdir(filepath.Join(upperRoot, "work"), 0o755)
	if err := unix.Mknod(filepath.Join(up, "gone.txt"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(up, "op"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Skipf("setxattr: %v", err)
	}
	ctx := context.Background()
	v, err := OpenDiskView(ctx, image(t, base), image(t, upperRoot))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := v.Walk(ctx, v.Root(), 100, func(n DiskNode) error {
		got = append(got, strings.TrimPrefix(n.Path, Root+"/"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// (this baseline keeps mke2fs's lost+found; BuildBase removes it)
	if s := strings.Join(got, " "); s != "changed.txt dir dir/new.txt dir/old.txt keep.txt lost+found op op/shown.txt" {
		t.Fatalf("merged: %s", s)
	}
	n, _ := v.Lookup(ctx, "changed.txt")
	if b, _, _ := v.Read(ctx, n, 100); string(b) != "v2\n" {
		t.Fatalf("upper wins: %q", b)
	}
	for _, p := range []string{"gone.txt", "op/hidden.txt"} {
		if _, err := v.Lookup(ctx, p); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("%s (whited out, under an opaque directory): %v", p, err)
		}
	}
	lookupsMatchWalk(t, v)
}

// lookupsMatchWalk checks that looking each node of v's tree up by its
// path (no listing) finds what the walk read from the listings.
func lookupsMatchWalk(t *testing.T, v *DiskView) {
	t.Helper()
	ctx := context.Background()
	n := 0
	err := v.Walk(ctx, v.Root(), 1000, func(w DiskNode) error {
		n++
		l, err := v.Lookup(ctx, w.Path)
		if err != nil {
			return err
		}
		if l.Path != w.Path || l.Type != w.Type || l.Perm != w.Perm || l.Size != w.Size || l.Link != w.Link || fmt.Sprint(l.at) != fmt.Sprint(w.at) {
			t.Errorf("lookup %q: %+v, the walk read %+v", w.Path, l, w)
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("walk of %d nodes: %v", n, err)
	}
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDiskViewBudget plays the guest that crafts its upper layer to make the
// host's disk tools expensive: thousands of whiteouts and directories in one
// directory cost a few debugfs runs (a level at a time, not one run per
// entry), and a deep chain of directories runs out of the view's one budget
// instead of spawning a process per level without end.
func TestDiskViewBudget(t *testing.T) {
	needE2fs(t)
	defer func(r int) { diskimg.BudgetRuns = r }(diskimg.BudgetRuns)
	diskimg.BudgetRuns = 12
	upperRoot := t.TempDir()
	up := filepath.Join(upperRoot, "upper")
	const n = 3000
	for i := range n {
		// 30 directories of 100 each: mke2fs -d is quadratic in one
		// directory's size; the walk reads them in one level anyway.
		g := filepath.Join(up, "many", fmt.Sprintf("g%d", i%30))
		if err := os.MkdirAll(filepath.Join(g, fmt.Sprintf("d%d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() == 0 {
			if err := unix.Mknod(filepath.Join(g, fmt.Sprintf("w%d", i)), unix.S_IFCHR, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	base := t.TempDir()
	writeFiles(t, base, map[string]string{"many/g1/w1": "whited out"})
	ctx := context.Background()
	img := func(tree string) string {
		p := filepath.Join(t.TempDir(), "img.ext4")
		if err := mkfs(ctx, p, 256<<20, "-N", "20000", "-d", tree); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t0 := time.Now()
	baseImg, upperImg := img(base), img(upperRoot)
	t.Logf("images: %s", time.Since(t0))
	start := time.Now()
	v, err := OpenDiskView(ctx, baseImg, upperImg)
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	if err := v.Walk(ctx, v.Root(), 100_000, func(DiskNode) error { count++; return nil }); err != nil {
		t.Fatalf("walk of %d directories and whiteouts: %v", n, err)
	}
	want := n + 32 // many/, g*/, d*/ and the baseline's lost+found; the whiteouts hide w*
	if os.Geteuid() != 0 {
		want++ // no whiteouts: the baseline's many/g1/w1 shows
	}
	if count != want {
		t.Fatalf("walked %d entries, want %d", count, want)
	}
	t.Logf("walk of %d directories + %d whiteouts: %s", n, n, time.Since(start).Round(time.Millisecond))

	// 200 nested directories: a level each, more runs than the budget.
	deep := t.TempDir()
	p := filepath.Join(deep, "upper")
	for range 200 {
		p = filepath.Join(p, "d")
	}
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	v, err = OpenDiskView(ctx, baseImg, img(deep))
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	err = v.Walk(ctx, v.Root(), 100_000, func(DiskNode) error { return nil })
	if !errors.Is(err, diskimg.ErrBudget) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("a 200-deep tree with a budget of %d runs: %v", diskimg.BudgetRuns, err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the budget stopped the walk after %s", d)
	}
	t.Logf("deep tree: %v", err)
}

// TestDiskViewWideLevel plays a guest that fills a level of its tree with
// many entries (here 100 directories of 200 files; a real attack holds
// millions): a walk bounded to a few hundred nodes reads about that many
// entries, not the whole level, and a directory over the per-directory cap
// is refused rather than read whole.
func TestDiskViewWideLevel(t *testing.T) {
	needE2fs(t)
	tree := t.TempDir()
	const dirs, files = 100, 200
	// Hard links of one file: creating files costs ~0.5 ms each here.
	one := filepath.Join(tree, "one")
	if err := os.WriteFile(one, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for d := range dirs {
		p := filepath.Join(tree, "many", fmt.Sprintf("d%03d", d))
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range files {
			if err := os.Link(one, filepath.Join(p, fmt.Sprintf("f%03d", f))); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "img.ext4")
	if err := mkfs(ctx, img, 64<<20, "-d", tree); err != nil {
		t.Fatal(err)
	}
	v, err := OpenDiskView(ctx, "", img)
	if err != nil {
		t.Fatal(err)
	}
	const max = 500
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	seen := 0
	err = v.Walk(ctx, v.Root(), max, func(DiskNode) error { seen++; return nil })
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrWalkLimit) || seen > max {
		t.Fatalf("walk of %d entries bounded to %d: %d seen, %v", dirs*files, max, seen, err)
	}
	// An entry read costs about ten allocations (the parse, the node, its
	// path, the merge): the old walk read the whole level (over 200,000
	// here), this one about max entries (about 6,000).
	allocs := after.Mallocs - before.Mallocs
	t.Logf("walk bounded to %d nodes over %d entries: %d allocations, %d KiB", max, dirs*files, allocs, (after.TotalAlloc-before.TotalAlloc)>>10)
	if allocs > 30*max {
		t.Fatalf("a walk bounded to %d nodes made %d allocations: it read the whole %d-entry level", max, allocs, dirs*files)
	}

	defer func(n int) { diskimg.MaxDirEntries = n }(diskimg.MaxDirEntries)
	diskimg.MaxDirEntries = files - 1
	d, err := v.Lookup(ctx, Root+"/many/d007")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.ReadDir(ctx, d); !errors.Is(err, diskimg.ErrTooManyEntries) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("a %d-entry directory under a %d-entry cap: %v", files, diskimg.MaxDirEntries, err)
	}
	// A lookup lists no directory: one name is found in a directory too
	// wide to read (debugfs looks it up), and the absent one is not.
	if n, err := v.Lookup(ctx, Root+"/many/d007/f001"); err != nil || n.Type != "file" || n.Path != Root+"/many/d007/f001" {
		t.Fatalf("lookup in a %d-entry directory under a %d-entry cap: %+v %v", files, diskimg.MaxDirEntries, n, err)
	}
	if _, err := v.Lookup(ctx, Root+"/many/d007/f999"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("lookup of a missing name in a wide directory: %v", err)
	}
	if d, err = v.Lookup(ctx, Root+"/many"); err != nil {
		t.Fatal(err)
	}
	if kids, err := v.ReadDir(ctx, d); err != nil || len(kids) != dirs {
		t.Fatalf("a directory under the cap: %d entries, %v", len(kids), err)
	}
}

// TestDiskViewWalkPathBytesBounded plays the guest that makes each path
// long instead of making many entries: 200 levels of 255-byte names, then
// files at the bottom. Each node the walk holds keeps its whole path (~50
// KiB here), so the million entries an export may walk held tens of GiB
// of paths in the host's process, from a few MB of image. The walk stops
// past maxWalkPathBytes of paths with the disk tools' budget error (an
// export then goes through the guest).
func TestDiskViewWalkPathBytesBounded(t *testing.T) {
	needE2fs(t)
	const levels = 200
	files := maxWalkPathBytes/((levels+2)*256) + 1 // just past the bound
	ctx := context.Background()
	v, err := OpenDiskView(ctx, "", longPathImage(t, "", levels, files))
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	err = v.Walk(ctx, v.Root(), maxExportEntries, func(n DiskNode) error {
		held += len(n.Path)
		return nil
	})
	if !errors.Is(err, diskimg.ErrBudget) {
		t.Fatalf("%d files under %d levels of 255-byte names: %d bytes of paths walked, %v", files, levels, held, err)
	}
}
