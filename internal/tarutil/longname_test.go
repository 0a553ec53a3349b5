package tarutil

import (
	"archive/tar"
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

// An untrusted archive's entry named past PATH_MAX is refused before its
// parents are made: each level cost a walk from the destination
// (quadratic in the depth), so a PAX name of thousands of levels (a guest's
// export, an image) held the host for as long as the name was deep.
func TestExtractUntrustedLongName(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	name := strings.Repeat("d/", 6000) + "f"
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX}); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	start := time.Now()
	_, err := ExtractTarWith(bytes.NewReader(buf.Bytes()), t.TempDir(), ExtractOptions{Untrusted: true})
	if !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("a name of %d bytes: %v (after %v)", len(name), err, time.Since(start))
	}
	// Within PATH_MAX it is extracted.
	buf.Reset()
	tw = tar.NewWriter(&buf)
	ok := strings.Repeat("d/", 100) + "f"
	if err := tw.WriteHeader(&tar.Header{Name: ok, Typeflag: tar.TypeReg, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	if _, err := ExtractTarWith(bytes.NewReader(buf.Bytes()), t.TempDir(), ExtractOptions{Untrusted: true}); err != nil {
		t.Fatal(err)
	}
}
