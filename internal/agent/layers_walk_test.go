package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// TestUpperListings pins what the two listings of an upper directory say:
// the change listing stops at files, whiteouts and opaque directories; the
// manifest lists every entry of a known kind and descends into directories.
func TestUpperListings(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("whiteouts and trusted xattrs need root")
	}
	up := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(up, "a/b"), 0o755))
	must(os.WriteFile(filepath.Join(up, "a/b/f"), []byte("x"), 0o644))
	must(os.Symlink("f", filepath.Join(up, "a/l")))
	must(unix.Mknod(filepath.Join(up, "gone"), unix.S_IFCHR|0o600, 0))
	must(os.MkdirAll(filepath.Join(up, "opq/in"), 0o755))
	if err := unix.Lsetxattr(filepath.Join(up, "opq"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Skipf("no trusted xattrs here: %v", err)
	}
	must(unix.Mknod(filepath.Join(up, "z-null"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))))

	sel, err := upperChanges(up)
	must(err)
	want := []tarutil.Selected{{Name: "a"}, {Name: "a/b"}, {Name: "a/b/f", Subtree: true}, {Name: "a/l", Subtree: true},
		{Name: "gone", Subtree: true}, {Name: "opq", Subtree: true}, {Name: "z-null", Subtree: true}}
	if !reflect.DeepEqual(sel, want) {
		t.Fatalf("upperChanges = %+v, want %+v", sel, want)
	}

	m, err := manifest(up)
	must(err)
	var got []string
	for _, e := range m {
		k := e.Path + ":" + e.Kind
		if e.Opaque {
			k += ":opaque"
		}
		got = append(got, k)
	}
	wantM := []string{"a:dir", "a/b:dir", "a/b/f:file", "a/l:symlink", "gone:whiteout", "opq:dir:opaque", "opq/in:dir"}
	if !reflect.DeepEqual(got, wantM) {
		t.Fatalf("manifest = %v, want %v", got, wantM)
	}
}

// A listing that would pass its size bound ends at the bound with
// errManifestTooLarge; one within it is the whole manifest.
func TestManifestWithin(t *testing.T) {
	up := t.TempDir()
	for _, d := range []string{"a", "b"} {
		if err := os.MkdirAll(filepath.Join(up, d), 0o755); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50; i++ {
			if err := os.WriteFile(filepath.Join(up, d, fmt.Sprintf("f%02d", i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	whole, err := manifest(up)
	if err != nil || len(whole) != 102 {
		t.Fatalf("manifest: %d entries, %v", len(whole), err)
	}
	// Room for the first ten entries only.
	if m, err := manifestWithin(up, 10*(5+manifestEntryBytes)); !errors.Is(err, errManifestTooLarge) || m != nil {
		t.Fatalf("over the bound: %d entries, %v", len(m), err)
	}
	m, err := manifestWithin(up, 102*(5+manifestEntryBytes))
	if err != nil || !reflect.DeepEqual(m, whole) {
		t.Fatalf("within the bound: %d entries, %v", len(m), err)
	}
}
