package tarutil

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTarSelected(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "d", "e"), 0o755)
	os.WriteFile(filepath.Join(root, "d", "e", "f"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(root, "a"), []byte("yy"), 0o644)
	var buf bytes.Buffer
	n, b, err := TarSelected(&buf, root, []Selected{{Name: "a"}, {Name: "missing", Subtree: true}, {Name: "d", Subtree: true}})
	if err != nil || n != 4 || b != 3 {
		t.Fatalf("n %d bytes %d err %v", n, b, err)
	}
	var names []string
	tr := tar.NewReader(&buf)
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
	if strings.Join(names, ",") != "a,d/,d/e/,d/e/f" {
		t.Fatalf("entries %v", names)
	}
	for _, bad := range []string{"../x", "/etc", "a/../b", "", "."} {
		if _, _, err := TarSelected(io.Discard, root, []Selected{{Name: bad}}); !errors.Is(err, ErrUnsafePath) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
