package agent

import (
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
