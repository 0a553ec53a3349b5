package diskimg

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestExtentsMatchCat: content read from the image file through the
// extent map equals what debugfs cat gives, for a sparse file with a tail
// block past a hole and a size past its last block, on 1 KiB and 4 KiB
// block images.
func TestExtentsMatchCat(t *testing.T) {
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	tree := t.TempDir()
	data := make([]byte, 1200*1024+77)
	rand.Read(data)
	os.WriteFile(filepath.Join(tree, "dense"), data, 0o644)
	f, _ := os.Create(filepath.Join(tree, "sparse"))
	f.Write(data[:5000])
	f.WriteAt([]byte("tail"), 10<<20)
	f.Truncate(12<<20 + 3)
	f.Close()
	os.WriteFile(filepath.Join(tree, "empty"), nil, 0o644)
	ctx := context.Background()
	for _, bs := range []string{"1024", "4096"} {
		img := filepath.Join(t.TempDir(), "img")
		if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-b", bs, "-d", tree, img, "64M").CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		im := Image{Path: img, Budget: DefaultBudget()}
		ents, err := im.List(ctx, RootIno)
		if err != nil {
			t.Fatal(err)
		}
		var inos []uint32
		var files []Dirent
		for _, e := range ents {
			if e.IsReg() {
				inos, files = append(inos, e.Ino), append(files, e)
			}
		}
		st, err := im.StatMany(ctx, inos)
		if err != nil {
			t.Fatal(err)
		}
		size, err := im.BlockSize(ctx)
		if err != nil || size != map[string]int64{"1024": 1024, "4096": 4096}[bs] {
			t.Fatalf("block size %d %v", size, err)
		}
		fh, _ := os.Open(img)
		defer fh.Close()
		for i, e := range files {
			var want bytes.Buffer
			if err := im.Cat(ctx, []CatItem{{e.Ino, e.Size}}, func(_ int, r io.Reader) error { _, err := io.Copy(&want, r); return err }); err != nil {
				t.Fatal(err)
			}
			if e.Size > 0 && !st[i].Mapped {
				t.Fatalf("%s (%s): no extent map", e.Name, bs)
			}
			var got bytes.Buffer
			if err := ReadExtents(fh, size, st[i].Extents, e.Size, &got, make([]byte, 4096)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Errorf("%s (%s-byte blocks): extents give %d bytes unlike cat's %d", e.Name, bs, got.Len(), want.Len())
			}
		}
	}
}

// TestReadExtentsCrafted: a map with overlapping, unwritten and
// out-of-image extents yields exactly size bytes or an error, never more.
func TestReadExtentsCrafted(t *testing.T) {
	img, _ := os.CreateTemp(t.TempDir(), "img")
	img.Write(bytes.Repeat([]byte{'a'}, 1024))
	img.Write(bytes.Repeat([]byte{'b'}, 1024))
	var out bytes.Buffer
	ext := []Extent{{Logical: 1, Physical: 1, Len: 1}, {Logical: 0, Physical: 0, Len: 2}, {Logical: 3, Physical: 0, Len: 1, Unwritten: true}}
	if err := ReadExtents(img, 1024, ext, 4*1024+10, &out, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	want := string(bytes.Repeat([]byte{'a'}, 1024)) + string(bytes.Repeat([]byte{'b'}, 1024)) + string(make([]byte, 2*1024+10))
	if out.String() != want {
		t.Fatalf("got %d bytes", out.Len())
	}
	out.Reset()
	if err := ReadExtents(img, 1024, []Extent{{Logical: 0, Physical: 5, Len: 1}}, 100, &out, make([]byte, 512)); err == nil {
		t.Fatal("an extent past the image's end was read")
	}
	if _, ok := parseExtents([]byte("x\nEXTENTS:\n(ETB0):9, (0-1):5-6, (2[u]):7\n")); !ok {
		t.Fatal("a map with a node and an unwritten extent did not parse")
	}
	if _, ok := parseExtents([]byte("x\nEXTENTS:\n(0-9):5-6\n")); ok {
		t.Fatal("a map whose ranges disagree parsed")
	}
}
