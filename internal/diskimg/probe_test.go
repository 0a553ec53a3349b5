package diskimg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// One debugfs run answers a host push's questions: the header (clean
// journal, block size, free space), the journal's map, and which paths
// exist (absent only when debugfs says so); a path it cannot quote is
// refused before debugfs runs.
func TestProbe(t *testing.T) {
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	tree := t.TempDir()
	if err := os.MkdirAll(filepath.Join(tree, "upper", "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "upper", "f"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(tree, "upper", "l")); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "img")
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", tree, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	im := Image{Path: img, Budget: DefaultBudget()}
	pr, err := im.Probe(context.Background(), []string{"/upper", "/upper/f", "/upper/nope", "/upper/l", "/upper/d", "/nope/deeper", "/upper/f/x"})
	if err != nil {
		t.Fatal(err)
	}
	if !pr.Clean || pr.BlockSize != 4096 || pr.FreeBlocks <= 0 || pr.FreeInodes <= 0 || len(pr.Journal) == 0 {
		t.Fatalf("header: %+v", pr)
	}
	want := []struct {
		found bool
		isDir bool
	}{{true, true}, {true, false}, {false, false}, {true, false}, {true, true}, {false, false}}
	for i, w := range want {
		if p := pr.Paths[i]; p.Found != w.found || p.IsDir() != w.isDir {
			t.Errorf("path %d: %+v, want found %v dir %v", i, p, w.found, w.isDir)
		}
	}
	if p := pr.Paths[1]; p.Size != 5 || !p.IsReg() || p.Name != "f" {
		t.Errorf("file: %+v", p)
	}
	// Under a file: not "not found", so neither absent nor present.
	if pr.Paths[6].Found || pr.Paths[6].Err == nil || pr.Paths[2].Err != nil {
		t.Errorf("a path under a file found: %+v", pr.Paths[6])
	}
	// The journal's body (all but its superblock) while it is empty...
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	body, err := pr.JournalBody(f)
	var blocks, n int64
	for _, e := range pr.Journal {
		blocks += int64(e.Len)
	}
	for _, r := range body {
		n += r[1]
	}
	if err != nil || n != (blocks-1)*4096 || body[0][0] != int64(pr.Journal[0].Physical+1)*4096 {
		t.Fatalf("journal body %v (%d of %d blocks): %v", body, n/4096, blocks, err)
	}
	// ... and nothing once it holds something to replay (s_start set).
	if _, err := f.WriteAt([]byte{0, 0, 0, 1}, int64(pr.Journal[0].Physical)*4096+28); err != nil {
		t.Fatal(err)
	}
	if body, err := pr.JournalBody(f); err != nil || body != nil {
		t.Fatalf("journal to replay: body %v, %v", body, err)
	}
	for _, bad := range []string{"/upper/a\"b", "/upper/a\nstat /x", "/upper/a\\b", "relative"} {
		if _, err := im.Probe(context.Background(), []string{bad}); !errors.Is(err, ErrUnprobable) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// A header field is read only from the one line that starts with its
// name: an image string printed raw in the header (here a volume name
// holding a fake features line) makes the header unreadable, not clean.
func TestProbeHeaderFieldsOnce(t *testing.T) {
	const head = "Filesystem volume name:   %s\nFilesystem features:      has_journal needs_recovery extent\nFree blocks:              10\nFree inodes:              5\nBlock size:               4096\nJournal inode:            8\n"
	var pr Probe
	if err := pr.header([]byte(fmt.Sprintf(head, "<none>"))); err != nil || pr.Clean || pr.BlockSize != 4096 || pr.FreeBlocks != 10 {
		t.Fatalf("honest header: %+v %v", pr, err)
	}
	pr = Probe{}
	if err := pr.header([]byte(fmt.Sprintf(head, "x\nFilesystem features: extent"))); err == nil || pr.Clean {
		t.Fatalf("a volume name faking the features line: %+v %v", pr, err)
	}
}
