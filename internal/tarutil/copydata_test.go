package tarutil

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// readCounter is a seekable archive that counts the bytes read through it.
type readCounter struct {
	*bytes.Reader
	read int64
}

func (r *readCounter) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	r.read += int64(n)
	return n, err
}

// TestCopyDataSeeksOverContent: with CopyData, each regular entry's
// content is written by the hook from its offset in the archive, and the
// tar reader seeks over it instead of reading it.
func TestCopyDataSeeksOverContent(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	bodies := map[string][]byte{"a.bin": bytes.Repeat([]byte("a"), 300<<10), "d/b.txt": []byte("bee\n"), "empty": nil}
	for _, name := range []string{"a.bin", "d/", "d/b.txt", "empty"} {
		if name == "d/" {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Typeflag: tar.TypeDir})
			continue
		}
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o640, Size: int64(len(bodies[name])), Typeflag: tar.TypeReg})
		tw.Write(bodies[name])
	}
	tw.Close()
	archive := buf.Bytes()
	src := &readCounter{Reader: bytes.NewReader(archive)}
	dest := t.TempDir()
	calls := 0
	st, err := ExtractTarWith(src, dest, ExtractOptions{CopyData: func(f *os.File, off, n int64) (int64, error) {
		calls++
		if off%512 != 0 {
			t.Errorf("content offset %d is not on a tar block", off)
		}
		return io.Copy(f, bytes.NewReader(archive[off:off+n]))
	}})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 3 || st.Files != 3 || st.Bytes != 300<<10+4 {
		t.Fatalf("calls %d, stats %+v", calls, st)
	}
	for name, want := range bodies {
		got, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %v, %d bytes, want %d", name, err, len(got), len(want))
		}
		if fi, _ := os.Stat(filepath.Join(dest, name)); fi == nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("%s: mode %v", name, fi)
		}
	}
	// Headers and a byte per skipped entry, not the 300 KiB of content.
	if src.read > 16<<10 {
		t.Errorf("read %d bytes of the archive through the reader: content was not skipped", src.read)
	}
}

// TestCopyDataNotForSparse: a sparse entry's archive bytes are not its
// content, so it never goes to CopyData (it is skipped or refused as
// without it).
func TestCopyDataNotForSparse(t *testing.T) {
	for _, name := range []string{"sparse-gnu.tar", "sparse-pax.tar"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = ExtractTarWith(bytes.NewReader(b), t.TempDir(), ExtractOptions{CopyData: func(*os.File, int64, int64) (int64, error) {
			t.Errorf("%s: CopyData called for a sparse entry", name)
			return 0, nil
		}})
	}
}
