package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func fileOpsFixture(t *testing.T) (string, *agentapi.Client) {
	t.Helper()
	base := t.TempDir()
	ws := filepath.Join(base, "ws")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(ws, "src", "deep"), 0o755))
	must(os.WriteFile(filepath.Join(ws, "a.txt"), []byte("hello\n"), 0o600))
	must(os.WriteFile(filepath.Join(ws, "src", "deep", "b.go"), []byte("package b\n"), 0o644))
	must(os.WriteFile(filepath.Join(base, "outside.txt"), []byte("secret"), 0o644))
	must(os.Symlink("../outside.txt", filepath.Join(ws, "escape")))
	must(os.Symlink("..", filepath.Join(ws, "up")))
	must(os.Symlink("a.txt", filepath.Join(ws, "inner")))
	return ws, newTestClient(t, Options{WorkspaceDir: ws})
}

func TestListFiles(t *testing.T) {
	ws, c := fileOpsFixture(t)
	l, err := c.ListFiles(testCtx(t), ws, ws, false)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range l.Entries {
		got = append(got, strings.TrimPrefix(e.Path, ws)+":"+e.Type)
	}
	if strings.Join(got, " ") != "/a.txt:file /escape:symlink /inner:symlink /src:dir /up:symlink" || l.Truncated {
		t.Fatalf("list: %v", got)
	}
	if l.Entries[0].SizeBytes != 6 || l.Entries[0].Mode != 0o600 || l.Entries[1].LinkTarget != "../outside.txt" {
		t.Fatalf("entries: %+v", l.Entries)
	}
	// Recursive: descends into src but never through the "up" symlink.
	l, err = c.ListFiles(testCtx(t), ws, ws, true)
	if err != nil || len(l.Entries) != 7 || l.Entries[len(l.Entries)-2].Path != ws+"/src/deep/b.go" {
		t.Fatalf("recursive: %+v %v", l.Entries, err)
	}
	// Listing a file is that one entry.
	if l, err := c.ListFiles(testCtx(t), ws+"/a.txt", ws, false); err != nil || len(l.Entries) != 1 || l.Entries[0].Type != "file" {
		t.Fatalf("list a file: %+v %v", l, err)
	}
	for _, p := range []string{ws + "/up", ws + "/escape", filepath.Dir(ws)} {
		if _, err := c.ListFiles(testCtx(t), p, ws, false); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("list %s escaped: %v", p, err)
		}
	}
	if _, err := c.ListFiles(testCtx(t), ws+"/missing", ws, false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
}

func TestListFilesCapped(t *testing.T) {
	ws, c := fileOpsFixture(t)
	d := filepath.Join(ws, "many")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < agentapi.MaxListEntries+5; i++ {
		f, err := os.Create(filepath.Join(d, "f"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	l, err := c.ListFiles(testCtx(t), d, ws, true)
	if err != nil || len(l.Entries) != agentapi.MaxListEntries || !l.Truncated {
		t.Fatalf("capped list: %d %v %v", len(l.Entries), l.Truncated, err)
	}
}

func TestReadFile(t *testing.T) {
	ws, c := fileOpsFixture(t)
	fc, err := c.ReadFile(testCtx(t), ws+"/a.txt", ws, 65536)
	if err != nil || string(fc.Content) != "hello\n" || fc.Truncated || fc.SizeBytes != 6 {
		t.Fatalf("read: %+v %v", fc, err)
	}
	fc, err = c.ReadFile(testCtx(t), ws+"/inner", ws, 3)
	if err != nil || string(fc.Content) != "hel" || !fc.Truncated || fc.SizeBytes != 6 {
		t.Fatalf("read through an inner symlink, capped: %+v %v", fc, err)
	}
	cases := map[string]error{
		ws + "/src":            errdefs.ErrInvalidArgument, // a directory
		ws + "/escape":         errdefs.ErrInvalidArgument, // symlink out
		ws + "/up/outside.txt": errdefs.ErrInvalidArgument,
		ws + "/nope":           errdefs.ErrNotFound,
	}
	for p, want := range cases {
		if _, err := c.ReadFile(testCtx(t), p, ws, 100); !errors.Is(err, want) {
			t.Errorf("read %s: %v, want %v", p, err, want)
		}
	}
	for _, max := range []int64{0, -1, agentapi.MaxReadBytes + 1} {
		if _, err := c.ReadFile(testCtx(t), ws+"/a.txt", ws, max); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("max_bytes %d: %v", max, err)
		}
	}
}

func sum(s string) *string {
	h := sha256.Sum256([]byte(s))
	x := hex.EncodeToString(h[:])
	return &x
}

func TestWriteFiles(t *testing.T) {
	ws, c := fileOpsFixture(t)
	res, err := c.WriteFiles(testCtx(t), agentapi.FileWriteRequest{Within: ws, Files: []agentapi.FileWrite{
		{Path: ws + "/a.txt", Content: []byte("hello\n")},
		{Path: ws + "/inner", Content: []byte("via link\n")}, // a.txt again, through a symlink
	}})
	if err == nil {
		t.Fatalf("a.txt named twice through a symlink must not both be written: %+v", res)
	}
	res, err = c.WriteFiles(testCtx(t), agentapi.FileWriteRequest{Within: ws, Files: []agentapi.FileWrite{
		{Path: ws + "/a.txt", Content: []byte("hello\n")},
		{Path: ws + "/new/dir/c.txt", Content: []byte("c\n")},
	}})
	if err != nil || len(res.Files) != 2 || res.Files[0].Changed || !res.Files[1].Changed || !res.Files[1].Created || res.Files[1].BytesWritten != 2 {
		t.Fatalf("write: %+v %v", res, err)
	}
	if b, _ := os.ReadFile(ws + "/new/dir/c.txt"); string(b) != "c\n" {
		t.Fatalf("c.txt: %q", b)
	}
	// The mode of an existing file is kept.
	if _, err := c.WriteFiles(testCtx(t), agentapi.FileWriteRequest{Within: ws, Files: []agentapi.FileWrite{{Path: ws + "/a.txt", Content: []byte("bye\n"), ExpectSHA256: sum("hello\n")}}}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(ws + "/a.txt"); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	// All-or-nothing: the second file's stale expectation stops the first.
	_, err = c.WriteFiles(testCtx(t), agentapi.FileWriteRequest{Within: ws, Files: []agentapi.FileWrite{
		{Path: ws + "/fresh/x.txt", Content: []byte("x")},
		{Path: ws + "/a.txt", Content: []byte("again\n"), ExpectSHA256: sum("hello\n")},
	}})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("stale expectation: %v", err)
	}
	if _, err := os.Lstat(ws + "/fresh"); err == nil {
		t.Fatal("a refused write left a directory behind")
	}
	if b, _ := os.ReadFile(ws + "/a.txt"); string(b) != "bye\n" {
		t.Fatalf("a.txt changed: %q", b)
	}
	leftovers, _ := filepath.Glob(ws + "/.pyro-write-*")
	if len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
	bad := map[string]error{
		ws + "/src":        errdefs.ErrInvalidArgument, // a directory
		ws + "/escape":     errdefs.ErrInvalidArgument, // through a symlink out
		ws + "/up/evil":    errdefs.ErrInvalidArgument,
		ws + "/a.txt/x":    errdefs.ErrInvalidArgument, // parent is a file
		"relative":         errdefs.ErrInvalidArgument,
		ws + "/../outside": errdefs.ErrInvalidArgument,
	}
	for p, want := range bad {
		if _, err := c.WriteFiles(testCtx(t), agentapi.FileWriteRequest{Within: ws, Files: []agentapi.FileWrite{{Path: p, Content: []byte("x")}}}); !errors.Is(err, want) {
			t.Errorf("write %s: %v, want %v", p, err, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(filepath.Dir(ws), "outside.txt")); string(b) != "secret" {
		t.Fatalf("outside file changed: %q", b)
	}
	// Delete.
	res, err = c.WriteFiles(testCtx(t), agentapi.FileWriteRequest{Within: ws, Files: []agentapi.FileWrite{{Path: ws + "/new/dir/c.txt", Delete: true, ExpectSHA256: sum("c\n")}}})
	if err != nil || !res.Files[0].Deleted {
		t.Fatalf("delete: %+v %v", res, err)
	}
	if _, err := c.WriteFiles(testCtx(t), agentapi.FileWriteRequest{Within: ws, Files: []agentapi.FileWrite{{Path: ws + "/new/dir/c.txt", Delete: true}}}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	// Too much content.
	if _, err := c.WriteFiles(testCtx(t), agentapi.FileWriteRequest{Within: ws, Files: []agentapi.FileWrite{{Path: ws + "/big", Content: make([]byte, agentapi.MaxWriteBytes+1)}}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("oversized write: %v", err)
	}
}
