package agent

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func buildTar(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link,
			ModTime: time.Date(2021, 5, 6, 7, 8, 9, 0, time.UTC)}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readTar lists a tar stream: name -> content or "-> target" or "dir".
func readTar(t *testing.T, r io.Reader) map[string]string {
	t.Helper()
	m := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return m
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			m[h.Name] = "dir"
		case tar.TypeSymlink:
			m[h.Name] = "-> " + h.Linkname
		default:
			b, _ := io.ReadAll(tr)
			m[h.Name] = string(b)
		}
	}
}

func keys(m map[string]string) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

func TestFilesPushPull(t *testing.T) {
	c := newTestClient(t, Options{})
	ctx := testCtx(t)
	dest := filepath.Join(t.TempDir(), "ws", "sub")
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	data := buildTar(t,
		tarEntry{name: "a.txt", typ: tar.TypeReg, body: "hello\n", mode: 0o600},
		tarEntry{name: "bin/", typ: tar.TypeDir, mode: 0o750},
		tarEntry{name: "bin/run.sh", typ: tar.TypeReg, body: "#!/bin/sh\necho hi\n", mode: 0o755},
		tarEntry{name: "bin/big", typ: tar.TypeReg, body: big},
		tarEntry{name: "link", typ: tar.TypeSymlink, link: "bin/run.sh"},
	)
	res, err := c.PushTar(ctx, dest, "", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	want := agentapi.PushResult{Files: 4, Dirs: 1, Bytes: int64(6 + 18 + len(big)), Dest: dest}
	if res != want {
		t.Fatalf("push result %+v, want %+v", res, want)
	}
	fi, err := os.Stat(filepath.Join(dest, "bin", "run.sh"))
	if err != nil || fi.Mode().Perm() != 0o755 || !fi.ModTime().Equal(time.Date(2021, 5, 6, 7, 8, 9, 0, time.UTC)) {
		t.Fatalf("run.sh: %v %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(dest, "bin")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("bin: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(dest, "link")); err != nil || l != "bin/run.sh" {
		t.Fatalf("link: %q %v", l, err)
	}

	// Pull the directory back.
	rc, kind, err := c.PullTar(ctx, dest, "")
	if err != nil {
		t.Fatal(err)
	}
	got := readTar(t, rc)
	rc.Close()
	if kind != agentapi.KindDir {
		t.Fatalf("kind %q", kind)
	}
	wantNames := []string{"a.txt", "bin/", "bin/big", "bin/run.sh", "link"}
	if k := keys(got); strings.Join(k, ",") != strings.Join(wantNames, ",") {
		t.Fatalf("names %q, want %q", k, wantNames)
	}
	if got["a.txt"] != "hello\n" || got["bin/big"] != big || got["link"] != "-> bin/run.sh" {
		t.Fatalf("contents differ")
	}

	// Pull back into a host dir with ExtractTar and compare trees.
	rc, _, err = c.PullTar(ctx, dest, "")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if _, err := tarutil.ExtractTar(rc, out); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	var a, b bytes.Buffer
	if _, _, err := tarutil.TarDir(&a, dest); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tarutil.TarDir(&b, out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		ha, hb := tar.NewReader(&a), tar.NewReader(&b)
		for {
			x, err1 := ha.Next()
			y, err2 := hb.Next()
			if err1 != nil || err2 != nil {
				break
			}
			t.Logf("%+v\n%+v", *x, *y)
		}
		t.Fatal("pulled tree differs from the pushed one")
	}

	// A file and a symlink come back as one entry named by the base name.
	rc, kind, err = c.PullTar(ctx, filepath.Join(dest, "bin", "run.sh"), "")
	if err != nil {
		t.Fatal(err)
	}
	got = readTar(t, rc)
	rc.Close()
	if kind != agentapi.KindFile || len(got) != 1 || got["run.sh"] != "#!/bin/sh\necho hi\n" {
		t.Fatalf("file pull: %q %v", kind, got)
	}
	rc, kind, err = c.PullTar(ctx, filepath.Join(dest, "link"), "")
	if err != nil {
		t.Fatal(err)
	}
	got = readTar(t, rc)
	rc.Close()
	if kind != agentapi.KindFile || len(got) != 1 || got["link"] != "-> bin/run.sh" {
		t.Fatalf("symlink pull: %q %v", kind, got)
	}

	// A second push overwrites and adds.
	res, err = c.PushTar(ctx, dest, "", bytes.NewReader(buildTar(t, tarEntry{name: "a.txt", typ: tar.TypeReg, body: "v2"})))
	if err != nil || res.Files != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "a.txt")); string(b) != "v2" {
		t.Fatalf("a.txt %q", b)
	}
}

func TestFilesPushRejectsEscapes(t *testing.T) {
	c := newTestClient(t, Options{})
	ctx := testCtx(t)
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"dotdot":   buildTar(t, tarEntry{name: "../x", typ: tar.TypeReg, body: "x"}),
		"absolute": buildTar(t, tarEntry{name: outside + "/x", typ: tar.TypeReg, body: "x"}),
		"symlink":  buildTar(t, tarEntry{name: "l", typ: tar.TypeSymlink, link: outside}, tarEntry{name: "l/x", typ: tar.TypeReg, body: "x"}),
		"garbage":  []byte(strings.Repeat("not a tar archive", 100)),
	} {
		_, err := c.PushTar(ctx, filepath.Join(base, "dest"), "", bytes.NewReader(data))
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: got %v, want invalid argument", name, err)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("wrote outside: %v", ents)
	}
	if _, err := c.PushTar(ctx, "relative/dir", "", bytes.NewReader(buildTar(t))); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("relative dest: %v", err)
	}
	f := filepath.Join(base, "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := c.PushTar(ctx, f, "", bytes.NewReader(buildTar(t))); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("file dest: %v", err)
	}
	// The session still works after rejected pushes.
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFilesPullErrors(t *testing.T) {
	c := newTestClient(t, Options{})
	ctx := testCtx(t)
	if _, _, err := c.PullTar(ctx, filepath.Join(t.TempDir(), "missing"), ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if _, _, err := c.PullTar(ctx, "rel", ""); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("relative: %v", err)
	}
	if _, _, err := c.PullTar(ctx, "/dev/null", ""); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("device: %v", err)
	}
}

func TestExecSyncsWorkspace(t *testing.T) {
	// syncWorkspace must tolerate a missing /workspace (host-compat, tests).
	New(Options{WorkspaceDir: filepath.Join(t.TempDir(), "missing")}).syncWorkspace()
	New(Options{WorkspaceDir: t.TempDir()}).syncWorkspace()
}

func TestFilesConfinedWithin(t *testing.T) {
	c := newTestClient(t, Options{})
	ctx := testCtx(t)
	root := t.TempDir()
	outside := t.TempDir()
	ws := filepath.Join(root, "ws")
	if err := os.MkdirAll(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600)
	if err := os.Symlink(outside, filepath.Join(ws, "link")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.PullTar(ctx, filepath.Join(ws, "link", "secret"), ws); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("pull through a symlink out of within: %v", err)
	}
	if _, err := c.PushTar(ctx, filepath.Join(ws, "link", "new"), ws, bytes.NewReader(buildTar(t, tarEntry{name: "x", typ: tar.TypeReg, body: "x"}))); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("push through a symlink out of within: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "new")); err == nil {
		t.Fatal("push wrote outside within")
	}
	// The symlink itself, pulled as a file, is fine: it is archived as a link.
	if rc, _, err := c.PullTar(ctx, filepath.Join(ws, "link"), ws); err != nil {
		t.Fatalf("pull of the link itself: %v", err)
	} else {
		rc.Close()
	}
}
