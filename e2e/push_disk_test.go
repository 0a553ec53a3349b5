package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// A push over the transfer disk's threshold goes through the workspace's
// transfer disk (workspace_push.go, internal/agent/pushdisk.go).

type pushResult struct {
	Transfer  string `json:"transfer"`
	FileCount int    `json:"file_count"`
	Bytes     int64  `json:"bytes"`
}

// listScript prints, for every entry under the current directory, its
// kind, mode and content digest (or link target), one line each, sorted.
const listScript = `find . -mindepth 1 | sort | while read -r p; do
if [ -L "$p" ]; then echo "$p link $(readlink "$p")";
elif [ -d "$p" ]; then echo "$p dir $(stat -c %a "$p")";
else echo "$p file $(stat -c %a "$p") $(sha256sum < "$p" | cut -d' ' -f1)"; fi; done`

// hostListing is listScript's output for a host tree.
func hostListing(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = "./" + rel
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		m := fi.Mode()
		mode := uint32(m.Perm())
		if m&fs.ModeSetuid != 0 {
			mode |= 0o4000
		}
		if m&fs.ModeSetgid != 0 {
			mode |= 0o2000
		}
		switch {
		case m&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			lines = append(lines, rel+" link "+target)
		case m.IsDir():
			lines = append(lines, fmt.Sprintf("%s dir %o", rel, mode))
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			lines = append(lines, fmt.Sprintf("%s file %o %s", rel, mode, hex.EncodeToString(sum[:])))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestPushThroughTransferDisk pushes a tree of large, mid-sized, small and
// empty files, modes (setuid included: a push keeps the host's modes, as a
// streamed one does), a symlink and an empty directory: the result says
// the transfer disk carried it, and /workspace holds it byte for byte. An
// archive with an entry leading out of dest is refused on that path too,
// with nothing written outside dest.
func TestPushThroughTransferDisk(t *testing.T) {
	env, id, _ := checkpointedWorkspace(t)
	env = append(env, "PYRO_HOST_PUSH=0") // the host's own path is push_checkpoint_test.go's
	src := t.TempDir()
	blob := func(n int) string { b := make([]byte, n); rand.Read(b); return string(b) }
	files := map[string]struct {
		body string
		mode fs.FileMode
	}{
		"big.bin":           {blob(3<<20 + 123), 0o644}, // direct pages and a tail
		"mid.bin":           {blob(100000), 0o600},
		"nested/deep/x.bin": {blob(70000), 0o640},
		"small.txt":         {"hi\n", 0o644}, // through the page cache
		"empty":             {"", 0o644},
		"run.sh":            {"#!/bin/sh\necho ok\n", 0o755},
		"suid":              {blob(5000), 0o755 | fs.ModeSetuid},
	}
	for name, f := range files {
		p := filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(f.body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("small.txt", filepath.Join(src, "link"))
	os.Mkdir(filepath.Join(src, "emptydir"), 0o700)
	var r pushResult
	mustWS(t, env, &r, "sync", "push", id, src, "--dest", "/workspace/in")
	if r.Transfer != "disk" {
		t.Fatalf("push transfer %q, want disk", r.Transfer)
	}
	if r.FileCount != len(files)+1 {
		t.Errorf("file_count %d, want %d", r.FileCount, len(files)+1)
	}
	m := wsExec(t, env, id, "sh", "-c", "cd /workspace/in && "+listScript)
	if got, want := strings.TrimSpace(fmt.Sprint(m["stdout"])), hostListing(t, src); got != want {
		t.Fatalf("pushed tree differs:\n got:\n%s\nwant:\n%s", got, want)
	}

	// An archive (large enough for the disk) with an escaping entry.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	big := []byte(blob(2 << 20))
	tw.WriteHeader(&tar.Header{Name: "ok.bin", Mode: 0o644, Size: int64(len(big)), Typeflag: tar.TypeReg})
	tw.Write(big)
	tw.WriteHeader(&tar.Header{Name: "../escape.txt", Mode: 0o644, Size: 3, Typeflag: tar.TypeReg})
	tw.Write([]byte("no\n"))
	tw.Close()
	bad := filepath.Join(t.TempDir(), "bad.tar")
	os.WriteFile(bad, buf.Bytes(), 0o644)
	if res := ws(t, env, nil, "sync", "push", id, bad, "--dest", "/workspace/bad"); res.code == 0 {
		t.Fatalf("a push with ../escape.txt succeeded: %s", res.stdout)
	}
	if m := wsExec(t, env, id, "sh", "-c", "test -e /workspace/escape.txt && echo escaped; true"); strings.Contains(fmt.Sprint(m["stdout"]), "escaped") {
		t.Fatal("the refused push wrote outside its dest")
	}
}
