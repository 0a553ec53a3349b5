package workspace

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// loopMount mounts the ext4 image img at a new directory (opts: mount
// options) and returns it; the test is skipped where this host cannot
// (not root, no loop devices).
func loopMount(t *testing.T, img, opts string) (string, func()) {
	t.Helper()
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop,"+opts, img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount an image here: %v: %s", err, out)
	}
	return mnt, func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Fatalf("umount: %v: %s", err, out)
		}
	}
}

// kernelListing lists upper as the guest's agent does, from the kernel's
// stat(2) of a mounted image: the truth ListUpper must match.
func kernelListing(t *testing.T, upper string) map[string]agentapi.LayerEntry {
	t.Helper()
	out := map[string]agentapi.LayerEntry{}
	err := filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == upper {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(upper, p)
		e := agentapi.LayerEntry{Path: rel, Size: st.Size, Mode: st.Mode, MtimeNS: st.Mtim.Nano(), CtimeNS: st.Ctim.Nano(), Ino: st.Ino}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.Kind = "dir"
			buf := make([]byte, 4)
			n, err := unix.Lgetxattr(p, "trusted.overlay.opaque", buf)
			e.Opaque = err == nil && n == 1 && buf[0] == 'y'
		case unix.S_IFLNK:
			e.Kind = "symlink"
		case unix.S_IFREG:
			e.Kind = "file"
		case unix.S_IFCHR:
			if st.Rdev == 0 {
				e.Kind = "whiteout"
			}
		}
		if e.Kind != "" {
			out[rel] = e
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A stopped workspace's upper layer listed on the host is the listing the
// guest's kernel gives of the same image, field by field (inode numbers,
// ns times, sizes of directories, modes with setuid, opaque marks,
// whiteouts; fifos and other devices left out), with parents before
// children.
func TestListUpperMatchesKernel(t *testing.T) {
	needE2fs(t)
	img := filepath.Join(t.TempDir(), "upper.ext4")
	if err := mkfs(context.Background(), img, 64<<20); err != nil {
		t.Fatal(err)
	}
	mnt, umount := loopMount(t, img, "rw")
	up := filepath.Join(mnt, "upper")
	writeFiles(t, up, map[string]string{"f.txt": "hello\n", "d/g.txt": "g", "d/e/deep.txt": "deep", "o/x": "x", "name\nwith newline": "n"})
	must := func(err error) {
		t.Helper()
		if err != nil {
			umount()
			t.Fatal(err)
		}
	}
	must(os.Chmod(filepath.Join(up, "f.txt"), 0o4755))
	must(unix.Setxattr(filepath.Join(up, "o"), "trusted.overlay.opaque", []byte("y"), 0))
	must(unix.Mknod(filepath.Join(up, "d", "gone"), unix.S_IFCHR|0o000, 0))
	must(unix.Mknod(filepath.Join(up, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mkfifo(filepath.Join(up, "fifo"), 0o644))
	must(os.Symlink("/etc/passwd", filepath.Join(up, "l")))
	must(os.Symlink(strings.Repeat("long/", 30), filepath.Join(up, "d", "long")))
	must(os.MkdirAll(filepath.Join(mnt, "work", "work"), 0o700))
	umount()

	m, err := ListUpper(context.Background(), img, 1000)
	if err != nil {
		t.Fatal(err)
	}
	mnt, umount = loopMount(t, img, "ro,noload")
	want := kernelListing(t, filepath.Join(mnt, "upper"))
	umount()
	pos := map[string]int{}
	for i, e := range m.Entries {
		pos[e.Path] = i
		if w, ok := want[e.Path]; !ok || w != e {
			t.Errorf("host listing %+v\nkernel        %+v", e, w)
		}
	}
	for p, w := range want {
		if _, ok := pos[p]; !ok {
			t.Errorf("missing from the host listing: %+v", w)
		}
		if dir := filepath.Dir(p); dir != "." && pos[dir] > pos[p] {
			t.Errorf("%q listed before its directory", p)
		}
	}
	for _, left := range []string{"fifo", "null"} {
		if _, ok := pos[left]; ok {
			t.Errorf("%s listed", left)
		}
	}
	if len(m.Entries) != len(want) {
		t.Errorf("host listing has %d entries, kernel %d", len(m.Entries), len(want))
	}
}

// A listing stops at its cap, and an image without an upper directory (a
// guest that never mounted it) lists empty.
func TestListUpperBounded(t *testing.T) {
	needE2fs(t)
	tree := t.TempDir()
	files := map[string]string{}
	for i := range 30 {
		files[fmt.Sprintf("upper/d%d/f", i)] = "x"
	}
	writeFiles(t, tree, files)
	img := image(t, tree)
	if _, err := ListUpper(context.Background(), img, 45); !errors.Is(err, ErrTooManyListed) {
		t.Fatalf("60 entries under a cap of 45: %v", err)
	}
	m, err := ListUpper(context.Background(), img, 60)
	if err != nil || len(m.Entries) != 60 {
		t.Fatalf("60 entries under a cap of 60: %d, %v", len(m.Entries), err)
	}
	empty := image(t, t.TempDir())
	if m, err := ListUpper(context.Background(), empty, 10); err != nil || m.Entries == nil || len(m.Entries) != 0 {
		t.Fatalf("no upper directory: %+v, %v", m, err)
	}
}

// A hostile guest nests directories a thousand deep (a few bytes each):
// the host listing reads one level per debugfs run, so it stops past
// MaxUpperDepth levels instead of running a thousand debugfs processes
// (~14 s, held under the push's locks) and leaves the listing to the
// guest. A tree exactly MaxUpperDepth deep still lists on the host.
func TestListUpperDepthBounded(t *testing.T) {
	needE2fs(t)
	deep := t.TempDir()
	writeFiles(t, deep, map[string]string{"upper/" + strings.Repeat("d/", 1000) + "f": "x"})
	if m, err := ListUpper(context.Background(), image(t, deep), 100_000); !errors.Is(err, ErrTooDeepListed) {
		t.Fatalf("a chain of 1,000 directories: %d entries, %v", len(m.Entries), err)
	}
	edge := t.TempDir()
	writeFiles(t, edge, map[string]string{"upper/" + strings.Repeat("d/", MaxUpperDepth-1) + "f": "x"})
	if m, err := ListUpper(context.Background(), image(t, edge), 100_000); err != nil || len(m.Entries) != MaxUpperDepth {
		t.Fatalf("a path %d deep: %d entries, %v", MaxUpperDepth, len(m.Entries), err)
	}
}

// A hostile guest makes each entry's path long instead of making many
// entries: levels of 255-byte names to MaxUpperDepth (ordinary mkdir
// calls, each relative to the last), then files at the bottom. Each
// entry's path is ~16 KiB, so the 100,000 entries a listing may hold were
// 1.6 GiB of paths in the host's process (and more again recorded), from
// ~30 MB of image. The listing stops past MaxUpperPathBytes of paths (the
// guest lists).
func TestListUpperPathBytesBounded(t *testing.T) {
	needE2fs(t)
	perFile := (MaxUpperDepth - 1) * 256
	files := MaxUpperPathBytes/perFile + 1 // just past the bound
	img := longPathImage(t, "upper", MaxUpperDepth-3, files)
	m, err := ListUpper(context.Background(), img, 100_000)
	if !errors.Is(err, ErrTooLargeListed) {
		t.Fatalf("%d files under %d levels of 255-byte names: %d entries, %v", files, MaxUpperDepth-1, len(m.Entries), err)
	}
}

// longPathImage is an ext4 image of a tree whose paths are long: under
// top (none: "") levels directories of 255-byte names, one in another,
// then files files in directories of 100 (mke2fs -d takes time quadratic
// in a directory's size). The tree is made a level at a time beneath the
// last (its paths are longer than the host's PATH_MAX).
func longPathImage(t *testing.T, top string, levels, files int) string {
	t.Helper()
	tree := t.TempDir()
	r, err := os.OpenRoot(tree)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("n", 255)
	name := func(i int) string { return fmt.Sprintf("%s%08d", long[:len(long)-8], i) }
	dirs := slices.Repeat([]string{long}, levels)
	if top != "" {
		dirs = append([]string{top}, dirs...)
	}
	for _, dir := range dirs {
		if err := r.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := r.OpenRoot(dir)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		r = next
	}
	defer r.Close()
	for d := 0; d*100 < files; d++ {
		if err := r.Mkdir(name(d), 0o755); err != nil {
			t.Fatal(err)
		}
		for i := d * 100; i < min(files, (d+1)*100); i++ {
			f, err := r.Create(name(d) + "/" + name(i))
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	img := filepath.Join(t.TempDir(), "img.ext4")
	if err := mkfs(context.Background(), img, 256<<20, "-d", tree); err != nil {
		t.Fatal(err)
	}
	return img
}
