package oci

import (
	"archive/tar"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// An image entry whose name is longer than PATH_MAX is refused before the
// walks over its parents: a PAX name of 200,000 slashes held the host's
// CPU for minutes in them (quadratic), where the refusal takes no time.
func TestImageEntryNameBounded(t *testing.T) {
	var n int64
	f := &layerFilter{label: "test image", written: map[string]bool{}, parents: map[string]bool{}, unpacked: &n, max: 1 << 40}
	long := strings.Repeat("a/", 200_000) + "f"
	start := time.Now()
	_, err := f.filter(&tar.Header{Typeflag: tar.TypeReg}, long)
	if !errors.Is(err, tarutil.ErrUnsafePath) || len(err.Error()) > 1024 {
		t.Fatalf("long name: %v", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("took %v", el)
	}
	// A deep name within PATH_MAX is taken.
	ok := strings.Repeat("a/", 2000) + "f"
	if skip, err := f.filter(&tar.Header{Typeflag: tar.TypeReg}, ok); err != nil || skip {
		t.Fatalf("name of %d bytes: %v %v", len(ok), skip, err)
	}
}
