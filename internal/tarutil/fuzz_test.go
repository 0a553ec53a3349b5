package tarutil

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzExtractTar feeds arbitrary archives to ExtractTar and checks that it
// never panics and never writes outside its destination, whatever the
// entries say (.., absolute names, links out, links through links).
func FuzzExtractTar(f *testing.F) {
	seed := func(hs ...tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hs {
			h := h
			if h.Typeflag == tar.TypeReg {
				h.Size = 1
			}
			tw.WriteHeader(&h)
			if h.Typeflag == tar.TypeReg {
				tw.Write([]byte("x"))
			}
		}
		tw.Close()
		return b.Bytes()
	}
	f.Add(seed(tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644}))
	f.Add(seed(tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}))
	f.Add(seed(tar.Header{Name: "/abs", Typeflag: tar.TypeReg, Mode: 0o644}))
	f.Add(seed(tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: ".."}, tar.Header{Name: "l/escape", Typeflag: tar.TypeReg, Mode: 0o644}))
	f.Add(seed(tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../outside/sentinel"}))
	f.Add(seed(tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755}, tar.Header{Name: "d/l", Typeflag: tar.TypeSymlink, Linkname: "/"}, tar.Header{Name: "d/l/etc", Typeflag: tar.TypeReg}))
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		dest := filepath.Join(base, "dest")
		outside := filepath.Join(base, "outside")
		if err := os.MkdirAll(dest, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(outside, 0o755); err != nil {
			t.Fatal(err)
		}
		sentinel := filepath.Join(outside, "sentinel")
		if err := os.WriteFile(sentinel, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, _ = ExtractTar(bytes.NewReader(data), dest)
		ents, _ := os.ReadDir(base)
		if len(ents) != 2 {
			t.Fatalf("extraction created %d entries beside dest", len(ents)-2)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 1 {
			t.Fatalf("extraction wrote into a sibling directory: %v", ents)
		}
		if b, err := os.ReadFile(sentinel); err != nil || string(b) != "keep" {
			t.Fatalf("sentinel changed: %q %v", b, err)
		}
	})
}

// The archives hold a 1 GiB file that is one hole and a byte (made with
// GNU tar --sparse, in GNU and PAX formats): 10 KiB that would expand.
func TestExtractRefusesSparse(t *testing.T) {
	for _, name := range []string{"sparse-gnu.tar", "sparse-pax.tar"} {
		f, err := os.Open(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		dest := t.TempDir()
		_, err = ExtractTar(f, dest)
		f.Close()
		// Refused (PAX: the entry claims more data than the archive
		// carries) or skipped (GNU: an unsupported entry type).
		fi, serr := os.Stat(filepath.Join(dest, "sp"))
		if err == nil && serr == nil {
			t.Errorf("%s: a sparse entry was extracted", name)
		}
		if serr == nil && fi.Size() > 1<<20 {
			t.Errorf("%s: wrote %d bytes before refusing", name, fi.Size())
		}
	}
}
