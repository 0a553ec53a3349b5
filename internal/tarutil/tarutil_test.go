package tarutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"
)

type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func mkTar(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, ModTime: mt}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// snapshot describes a tree: name -> "type mode content-or-target mtime".
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		var v string
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			v = "L " + l
		case fi.IsDir():
			v = "D " + fi.Mode().String() + " " + fi.ModTime().UTC().String()
		default:
			b, _ := os.ReadFile(p)
			v = "F " + fi.Mode().String() + " " + string(b) + " " + fi.ModTime().UTC().String()
		}
		m[rel] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestExtractAndTarDirRoundTrip(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "new", "dest")
	data := mkTar(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o755},
		entry{name: "./a.txt", typ: tar.TypeReg, body: "hello", mode: 0o640},
		entry{name: "sub/deeper/", typ: tar.TypeDir, mode: 0o700},
		entry{name: "sub/deeper/x.sh", typ: tar.TypeReg, body: "#!/bin/sh\n", mode: 0o755},
		entry{name: "implicit/parent/f", typ: tar.TypeReg, body: "p"},
		entry{name: "link", typ: tar.TypeSymlink, link: "sub/deeper/x.sh"},
		entry{name: "abs-link", typ: tar.TypeSymlink, link: "/etc/passwd"},
		entry{name: "hard", typ: tar.TypeLink, link: "a.txt"},
		entry{name: "fifo", typ: tar.TypeFifo},
	)
	st, err := ExtractTar(bytes.NewReader(data), dest)
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 6 || st.Dirs != 1 || st.Bytes != int64(len("hello#!/bin/sh\np")) {
		t.Fatalf("stats %+v", st)
	}
	snap := snapshot(t, dest)
	want := map[string]string{
		"a.txt":             "F -rw-r----- hello 2020-01-02 03:04:05 +0000 UTC",
		"hard":              "F -rw-r----- hello 2020-01-02 03:04:05 +0000 UTC",
		"sub":               snap["sub"],
		"sub/deeper":        "D drwx------ 2020-01-02 03:04:05 +0000 UTC",
		"sub/deeper/x.sh":   "F -rwxr-xr-x #!/bin/sh\n 2020-01-02 03:04:05 +0000 UTC",
		"implicit":          snap["implicit"],
		"implicit/parent":   snap["implicit/parent"],
		"implicit/parent/f": "F -rw-r--r-- p 2020-01-02 03:04:05 +0000 UTC",
		"link":              "L sub/deeper/x.sh",
		"abs-link":          "L /etc/passwd",
	}
	if len(snap) != len(want) {
		t.Fatalf("got %d entries %v, want %d", len(snap), snap, len(want))
	}
	for k, v := range want {
		if snap[k] != v {
			t.Errorf("%s: got %q, want %q", k, snap[k], v)
		}
	}

	// TarDir then ExtractTar reproduces the tree.
	var buf bytes.Buffer
	n, b, err := TarDir(&buf, dest)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(want) || b != st.Bytes*1+int64(len("hello")) { // hard link is stored as a copy
		t.Fatalf("TarDir count %d bytes %d", n, b)
	}
	var names []string
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	sort.Strings(names)
	wantNames := []string{"a.txt", "abs-link", "hard", "implicit/", "implicit/parent/", "implicit/parent/f", "link", "sub/", "sub/deeper/", "sub/deeper/x.sh"}
	if !equal(names, wantNames) {
		t.Fatalf("names %q, want %q", names, wantNames)
	}
	dest2 := t.TempDir()
	if _, err := ExtractTar(&buf, dest2); err != nil {
		t.Fatal(err)
	}
	snap2 := snapshot(t, dest2)
	for k, v := range snap {
		if snap2[k] != v {
			t.Errorf("round trip %s: got %q, want %q", k, snap2[k], v)
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestExtractRejectsEscapes(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"dotdot":        mkTar(t, entry{name: "../x", typ: tar.TypeReg, body: "x"}),
		"inner dotdot":  mkTar(t, entry{name: "a/../../x", typ: tar.TypeReg, body: "x"}),
		"absolute":      mkTar(t, entry{name: outside + "/x", typ: tar.TypeReg, body: "x"}),
		"symlink dir":   mkTar(t, entry{name: "l", typ: tar.TypeSymlink, link: outside}, entry{name: "l/x", typ: tar.TypeReg, body: "x"}),
		"relative link": mkTar(t, entry{name: "l", typ: tar.TypeSymlink, link: "../outside"}, entry{name: "l/x", typ: tar.TypeReg, body: "x"}),
		"link as dir":   mkTar(t, entry{name: "l", typ: tar.TypeSymlink, link: "../outside"}, entry{name: "l/", typ: tar.TypeDir}, entry{name: "l/x", typ: tar.TypeReg, body: "x"}),
		"hard link out": mkTar(t, entry{name: "h", typ: tar.TypeLink, link: "../outside/secret"}),
		"hard link abs": mkTar(t, entry{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}),
	} {
		t.Run(name, func(t *testing.T) {
			dest := filepath.Join(base, "dest-"+name)
			_, err := ExtractTar(bytes.NewReader(data), dest)
			if name == "link as dir" {
				// The directory entry replaces the symlink; x lands inside.
				if err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(filepath.Join(dest, "l", "x")); err != nil {
					t.Fatal(err)
				}
			} else if !errors.Is(err, ErrUnsafePath) {
				t.Fatalf("got %v, want ErrUnsafePath", err)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("wrote outside: %v", ents)
			}
		})
	}
}

func TestExtractDoesNotFollowExistingSymlinks(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	dest := filepath.Join(base, "dest")
	for _, d := range []string{outside, dest} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	target := filepath.Join(outside, "target")
	if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dest, "f")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dest, "d")); err != nil {
		t.Fatal(err)
	}
	// A file over an existing symlink replaces the link.
	if _, err := ExtractTar(bytes.NewReader(mkTar(t, entry{name: "f", typ: tar.TypeReg, body: "new"})), dest); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Fatalf("wrote through symlink: %q", b)
	}
	if fi, _ := os.Lstat(filepath.Join(dest, "f")); !fi.Mode().IsRegular() {
		t.Fatalf("f not replaced: %v", fi.Mode())
	}
	// A file under an existing symlinked directory is refused.
	_, err := ExtractTar(bytes.NewReader(mkTar(t, entry{name: "d/g", typ: tar.TypeReg, body: "x"})), dest)
	if !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Lstat(filepath.Join(outside, "g")); err == nil {
		t.Fatal("wrote through symlinked dir")
	}
	// Overwriting a file keeps working, and a directory stays a directory.
	if _, err := ExtractTar(bytes.NewReader(mkTar(t, entry{name: "f", typ: tar.TypeReg, body: "newer"}, entry{name: "sub/", typ: tar.TypeDir}, entry{name: "sub/", typ: tar.TypeDir})), dest); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "f")); string(b) != "newer" {
		t.Fatalf("got %q", b)
	}
}

func TestExtractTruncated(t *testing.T) {
	data := mkTar(t, entry{name: "a", typ: tar.TypeReg, body: string(make([]byte, 5000))})
	_, err := ExtractTar(bytes.NewReader(data[:1500]), t.TempDir())
	if !errors.Is(err, ErrBadArchive) {
		t.Fatalf("got %v", err)
	}
}

func TestTarFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.bin")
	if err := os.WriteFile(p, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	n, err := TarFile(&buf, p, "f.bin")
	if err != nil || n != 4 {
		t.Fatal(n, err)
	}
	tr := tar.NewReader(&buf)
	h, err := tr.Next()
	if err != nil || h.Name != "f.bin" || h.Size != 4 || h.Mode != 0o600 {
		t.Fatalf("%+v %v", h, err)
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatalf("second entry: %v", err)
	}
}

func TestOpenArchive(t *testing.T) {
	dir := t.TempDir()
	data := mkTar(t, entry{name: "a.txt", typ: tar.TypeReg, body: "A"})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(data)
	zw.Close()
	for name, b := range map[string][]byte{
		"plain.tar":       data,
		"zipped.tar.gz":   gz.Bytes(),
		"zipped.tgz":      gz.Bytes(),
		"misnamed.tar":    gz.Bytes(),
		"misnamed.tar.gz": data,
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		rc, err := OpenArchive(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		tr := tar.NewReader(rc)
		h, err := tr.Next()
		if err != nil || h.Name != "a.txt" {
			t.Fatalf("%s: %+v %v", name, h, err)
		}
		body, _ := io.ReadAll(tr)
		if string(body) != "A" {
			t.Fatalf("%s: %q", name, body)
		}
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := OpenArchive(filepath.Join(dir, "missing.tar")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
}

// A guest-written archive cannot put setuid bits, modes beyond the umask,
// devices or links out of the tree on the host, nor change dest's mode.
func TestExtractUntrusted(t *testing.T) {
	data := mkTar(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o7777},
		entry{name: "suid", typ: tar.TypeReg, mode: 0o6755, body: "x"},
		entry{name: "world/", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "world/f", typ: tar.TypeReg, mode: 0o666, body: "y"},
		entry{name: "id_rsa", typ: tar.TypeSymlink, link: "/root/.ssh/id_rsa"},
		entry{name: "sub/x", typ: tar.TypeSymlink, link: "../../etc"},
		entry{name: "sub/ok", typ: tar.TypeSymlink, link: "../suid"},
		entry{name: "sub/deep/up", typ: tar.TypeSymlink, link: "../../world/f"},
		entry{name: "dot", typ: tar.TypeSymlink, link: "."},
		entry{name: "through", typ: tar.TypeSymlink, link: "dot/.."},
		entry{name: "fifo", typ: tar.TypeFifo},
		entry{name: "null", typ: tar.TypeChar},
	)
	dest := t.TempDir()
	if err := os.Chmod(dest, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := ExtractTarWith(bytes.NewReader(data), dest, ExtractOptions{Untrusted: true, Umask: 0o022})
	if err != nil {
		t.Fatal(err)
	}
	mode := func(name string) fs.FileMode {
		fi, err := os.Lstat(filepath.Join(dest, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode()
	}
	if m := mode("."); m.Perm() != 0o700 || m&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
		t.Errorf("dest mode changed to %v by the archive's . entry", m)
	}
	if m := mode("suid"); m != 0o755 {
		t.Errorf("suid file: %v, want -rwxr-xr-x", m)
	}
	if m := mode("world"); m != fs.ModeDir|0o755 {
		t.Errorf("0777 sticky dir: %v, want drwxr-xr-x", m)
	}
	if m := mode("world/f"); m != 0o644 {
		t.Errorf("0666 file: %v, want -rw-r--r--", m)
	}
	for _, name := range []string{"id_rsa", "sub/x", "through", "fifo", "null"} {
		if _, err := os.Lstat(filepath.Join(dest, name)); err == nil {
			t.Errorf("%s was written", name)
		}
	}
	for _, name := range []string{"sub/ok", "sub/deep/up", "dot"} {
		if mode(name)&fs.ModeSymlink == 0 {
			t.Errorf("%s: a symlink inside the tree was not kept", name)
		}
	}
	if st.SkippedCount != 5 || len(st.Skipped) != 5 {
		t.Fatalf("skipped %d %v, want 5", st.SkippedCount, st.Skipped)
	}
	got := map[string]string{}
	for _, s := range st.Skipped {
		got[s.Path] = s.Reason
	}
	want := map[string]string{
		"id_rsa":  "absolute symlink",
		"sub/x":   "symlink leading out of the exported tree",
		"through": "symlink with .. after another element",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("skipped %s: %q, want %q", k, got[k], v)
		}
	}
}

// The trusted mode (the agent extracting a push) keeps modes and links.
func TestExtractTrustedKeepsModes(t *testing.T) {
	data := mkTar(t,
		entry{name: "suid", typ: tar.TypeReg, mode: 0o4755, body: "x"},
		entry{name: "abs", typ: tar.TypeSymlink, link: "/etc/hostname"},
	)
	dest := t.TempDir()
	if _, err := ExtractTar(bytes.NewReader(data), dest); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(dest, "suid")); err != nil || fi.Mode()&fs.ModeSetuid == 0 {
		t.Errorf("trusted extraction dropped setuid: %v %v", fi.Mode(), err)
	}
	if l, err := os.Readlink(filepath.Join(dest, "abs")); err != nil || l != "/etc/hostname" {
		t.Errorf("trusted extraction dropped an absolute symlink: %q %v", l, err)
	}
}

func TestSkippedIsBounded(t *testing.T) {
	var es []entry
	for i := 0; i < MaxSkipped+50; i++ {
		es = append(es, entry{name: "f" + string(rune('a'+i%26)) + string(rune('a'+i/26)), typ: tar.TypeFifo})
	}
	st, err := ExtractTarWith(bytes.NewReader(mkTar(t, es...)), t.TempDir(), ExtractOptions{Untrusted: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.SkippedCount != MaxSkipped+50 || len(st.Skipped) != MaxSkipped {
		t.Errorf("skipped count %d, list %d", st.SkippedCount, len(st.Skipped))
	}
}

func TestProcessUmask(t *testing.T) {
	old := syscall.Umask(0o027)
	defer syscall.Umask(old)
	if m := ProcessUmask(); m != 0o027 {
		t.Errorf("umask %o, want 027", m)
	}
}

func TestReaderRefusesSparseAndOversized(t *testing.T) {
	for _, name := range []string{"sparse-gnu.tar", "sparse-pax.tar"} {
		f, err := os.Open(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		_, err = NewReader(f, 0).Next()
		f.Close()
		if !errors.Is(err, ErrBadArchive) {
			t.Errorf("%s: %v, want a refused sparse entry", name, err)
		}
	}
	data := mkTar(t, entry{name: "small", typ: tar.TypeReg, body: "abc"}, entry{name: "big", typ: tar.TypeReg, body: "0123456789"})
	r := NewReader(bytes.NewReader(data), 5)
	if h, err := r.Next(); err != nil || h.Name != "small" {
		t.Fatalf("first entry: %v %v", h, err)
	}
	if b, err := io.ReadAll(r); err != nil || string(b) != "abc" {
		t.Fatalf("read: %q %v", b, err)
	}
	if _, err := r.Next(); !errors.Is(err, ErrBadArchive) {
		t.Errorf("oversized entry: %v", err)
	}
}
