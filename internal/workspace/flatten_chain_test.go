package workspace

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// qemuIO runs qemu-io commands against a qcow2 layer (as the QEMU that
// runs a guest would write it).
func qemuIO(t *testing.T, layer string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	if out, err := exec.Command("qemu-io", append(args, layer)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io %v: %v %s", cmds, err, out)
	}
}

// chainOfThree makes a workspace of an 8 MiB raw disk with data under
// three of pyro's overlays, each written as a guest would (data, partial
// clusters over the backing's data, zeroed clusters, rewrites of what a
// lower overlay holds), the last one the top.
func chainOfThree(t *testing.T) Layers {
	t.Helper()
	dir := t.TempDir()
	l := Layers{Dir: dir, Disk: filepath.Join(dir, "workspace.ext4")}
	f, err := os.OpenFile(l.Disk, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 20); err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < 8<<20; i += 3 << 16 { // data here and there, holes between
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i>>16) | 1}, 5000), i); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if err := os.MkdirAll(filepath.Join(dir, LayersDir), 0o700); err != nil {
		t.Fatal(err)
	}
	backing, format := "../workspace.ext4", "raw"
	writes := [][]string{
		{"write -P 0xa1 0 4k", "write -P 0xa2 70k 100k", "write -P 0xa3 4m 64k", "write -z 3m 128k"},
		{"write -P 0xb1 2k 1k", "write -z 4m 64k", "write -P 0xb2 7m 1m", "write -P 0xb3 1m 8k"},
		{"write -P 0xc1 4m 10k", "write -z 7m 64k", "write -P 0xc2 8384512 4k"},
	}
	for i, w := range writes {
		name := LayersDir + "/" + string(rune('1'+i)) + ".qcow2"
		if err := CreateOverlay(l.Path(name), backing, format, 8<<20); err != nil {
			t.Fatal(err)
		}
		qemuIO(t, l.Path(name), w...)
		backing, format = filepath.Base(name), "qcow2"
		if err := l.SetTop(name); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// qemuImgFlat is what qemu-img makes of the chain (the reference).
func qemuImgFlat(t *testing.T, l Layers) []byte {
	t.Helper()
	out, done, err := l.RawUpper(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFlattenedUpperInProcess: a chain of pyro's overlays flattens to
// exactly what qemu-img makes of it, without running qemu-img (the old
// push ran it: a qemu-img that fails here failed the push's flattening),
// and leaves holes where the chain reads zeros from nothing. A chain it
// does not read (a compressed cluster) goes to qemu-img.
func TestFlattenedUpperInProcess(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s here (qemu-utils)", tool)
		}
	}
	ctx := context.Background()
	l := chainOfThree(t)
	want := qemuImgFlat(t, l)
	path := os.Getenv("PATH")

	fakeQemuImg(t, "exit 1")
	out, done, err := l.FlattenedUpper(ctx)
	if err != nil {
		t.Fatalf("flatten without qemu-img: %v", err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("flattened copy differs from qemu-img's at byte %d (%#x, want %#x)", i, got[i], want[i])
			}
		}
		t.Fatalf("flattened copy is %d bytes, qemu-img's %d", len(got), len(want))
	}
	var st unix.Stat_t
	if err := unix.Stat(out, &st); err != nil || st.Blocks*512 >= int64(len(want))/2 {
		t.Fatalf("flattened copy is not sparse: %d bytes allocated of %d (%v)", st.Blocks*512, len(want), err)
	}
	done()
	noFlatCopy(t, l)

	// A compressed cluster in the top: qemu-img's part.
	qemuIO(t, l.Path(LayersDir+"/3.qcow2"), "write -c -P 0xd1 5m 64k")
	if _, _, err := l.FlattenedUpper(ctx); err == nil {
		t.Fatal("a compressed cluster was flattened in-process (qemu-img, failing here, is its reader)")
	}
	noFlatCopy(t, l)
	t.Setenv("PATH", path)
	want = qemuImgFlat(t, l)
	out, done, err = l.FlattenedUpper(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("a chain with a compressed cluster, through qemu-img: differs (%v)", err)
	}
	done()
	noFlatCopy(t, l)
}
