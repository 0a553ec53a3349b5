package workspace

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func mkTar(t *testing.T, es ...tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestExportFileNeverBecomesALink(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(secret, []byte("root:x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, link := range []string{"/etc/shadow", "other", "../../" + secret} {
		out := filepath.Join(t.TempDir(), "out")
		data := mkTar(t, tarEntry{name: "f", typ: tar.TypeSymlink, link: link})
		_, err := Export(bytes.NewReader(data), "/workspace/f", agentapi.KindFile, out, false)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("file export of a symlink to %s: %v, want invalid_argument", link, err)
		}
		if _, err := os.Lstat(out); err == nil {
			t.Errorf("symlink to %s: the output path was written", link)
		}
	}
}

func TestExportFileModes(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	out := filepath.Join(t.TempDir(), "out")
	data := mkTar(t, tarEntry{name: "tool", typ: tar.TypeReg, mode: 0o6777, body: "#!/bin/sh\n"})
	st, err := Export(bytes.NewReader(data), "/workspace/bin/tool", agentapi.KindFile, out, false)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(out)
	if err != nil || fi.Mode() != 0o755 || st.Files != 1 {
		t.Fatalf("exported file: %v %v %+v, want -rwxr-xr-x", fi.Mode(), err, st)
	}
}

func TestExportDirNormalises(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	out := filepath.Join(t.TempDir(), "out")
	data := mkTar(t,
		tarEntry{name: "./", typ: tar.TypeDir, mode: 0o777},
		tarEntry{name: "open/", typ: tar.TypeDir, mode: 0o777},
		tarEntry{name: "open/suid", typ: tar.TypeReg, mode: 0o4755, body: "x"},
		tarEntry{name: "id_rsa", typ: tar.TypeSymlink, link: "/root/.ssh/id_rsa"},
		tarEntry{name: "x", typ: tar.TypeSymlink, link: "../../etc"},
	)
	st, err := Export(bytes.NewReader(data), "/workspace", agentapi.KindDir, out, false)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]fs.FileMode{".": fs.ModeDir | 0o700, "open": fs.ModeDir | 0o700, "open/suid": 0o700} {
		fi, err := os.Lstat(filepath.Join(out, name))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: %v %v, want %v", name, fi.Mode(), err, want)
		}
	}
	if st.SkippedCount != 2 {
		t.Errorf("skipped %+v, want id_rsa and x", st.Skipped)
	}
}

// An existing symlink at the output path is replaced (with overwrite) or
// refused, never written through.
func TestExportDoesNotFollowOutputSymlink(t *testing.T) {
	base := t.TempDir()
	victim := filepath.Join(base, "victim")
	if err := os.Mkdir(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(victim, "keep"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(base, "out")
	if err := os.Symlink(victim, out); err != nil {
		t.Fatal(err)
	}
	data := mkTar(t, tarEntry{name: "keep", typ: tar.TypeReg, mode: 0o644, body: "guest"})
	if _, err := Export(bytes.NewReader(data), "/workspace", agentapi.KindDir, out, false); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("export onto an existing symlink without overwrite: %v", err)
	}
	if _, err := Export(bytes.NewReader(data), "/workspace", agentapi.KindDir, out, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(victim, "keep")); string(b) != "keep" {
		t.Errorf("export wrote through the symlink: %q", b)
	}
	if fi, err := os.Lstat(out); err != nil || !fi.IsDir() {
		t.Errorf("output is not the exported directory: %v %v", fi.Mode(), err)
	}
	ents, _ := os.ReadDir(base)
	if len(ents) != 2 {
		t.Errorf("leftovers beside the output: %v", ents)
	}
}

func TestExportRejectsUnknownKind(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	if _, err := Export(bytes.NewReader(mkTar(t)), "/workspace", "fifo", out, false); err == nil {
		t.Error("an unknown kind was accepted")
	}
}
