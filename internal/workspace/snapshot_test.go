package workspace

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Crafted names are refused at every lookup, before they touch the file
// system: "../../x" once deleted a host file and "./baseline" the baseline.
func TestSnapshotNamesAtEveryLookup(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "ws", "snapshots")
	s := Snapshots{Dir: dir}
	if _, err := s.Save(Baseline, strings.NewReader("base")); err != nil {
		t.Fatal(err)
	}
	// Files a traversal would reach: root/x.json and root/x.tar.
	for _, p := range []string{filepath.Join(root, "x.json"), filepath.Join(root, "x.tar")} {
		if err := os.WriteFile(p, []byte(`{"name":"x","sha256":"ab"}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bad := []string{"../../x", "./baseline", "baseline/..", "baseline/", "/etc/passwd", "a\x00b", "..", ".", "",
		strings.Repeat("a", 65), strings.Repeat("../", 40) + "x", "-rf", "a b", "baseline\n"}
	for _, name := range bad {
		if err := s.Delete(name); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Delete(%q): %v, want invalid_argument", name, err)
		}
		if _, err := s.Open(name); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Open(%q): %v, want invalid_argument", name, err)
		}
		if _, err := s.Get(name); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Get(%q): %v, want invalid_argument", name, err)
		}
		if _, err := s.Save(name, strings.NewReader("x")); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Save(%q): %v, want invalid_argument", name, err)
		}
	}
	for _, p := range []string{filepath.Join(root, "x.json"), filepath.Join(root, "x.tar"), s.tarPath(Baseline), s.metaPath(Baseline)} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s is gone: %v", p, err)
		}
	}
	if err := s.Delete(Baseline); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Delete(baseline): %v", err)
	}
	if _, err := s.Open(Baseline); err != nil {
		t.Errorf("baseline after the attempts: %v", err)
	}
}

// A tampered record (short digest, other name, junk) is refused with an
// error, never sliced into a panic; List leaves it out; Delete removes it.
func TestSnapshotTamperedRecord(t *testing.T) {
	s := Snapshots{Dir: t.TempDir()}
	if _, err := s.Save(Baseline, strings.NewReader("base")); err != nil {
		t.Fatal(err)
	}
	for name, rec := range map[string]string{
		"short":    `{"name":"short","sha256":"ab","bytes":4}`,
		"empty":    `{"name":"empty","sha256":"","bytes":4}`,
		"other":    `{"name":"baseline","sha256":"` + strings.Repeat("0", 64) + `","bytes":4,"implicit":true}`,
		"nothex":   `{"name":"nothex","sha256":"` + strings.Repeat("z", 64) + `","bytes":4}`,
		"junk":     `not json`,
		"negative": `{"name":"negative","sha256":"` + strings.Repeat("0", 64) + `","bytes":-1}`,
	} {
		if err := os.WriteFile(s.metaPath(name), []byte(rec), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s.tarPath(name), []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Open(name); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("Open(%s): %v, want failed_precondition", name, err)
		}
	}
	// A tampered baseline record too.
	if err := os.WriteFile(s.metaPath(Baseline), []byte(`{"name":"baseline","sha256":"1","implicit":true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(Baseline); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Open(tampered baseline): %v", err)
	}
	if list, err := s.List(); err != nil || len(list) != 0 {
		t.Errorf("List shows damaged records: %+v %v", list, err)
	}
	if err := s.Delete("short"); err != nil {
		t.Errorf("Delete(damaged): %v", err)
	}
	if _, err := os.Stat(s.metaPath("short")); err == nil {
		t.Error("damaged record still there")
	}
}

func TestSnapshotListIgnoresStrayFiles(t *testing.T) {
	s := Snapshots{Dir: t.TempDir()}
	if _, err := s.Save("good", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(s.metaPath("good"))
	for _, stray := range []string{".hidden.json", "-x.json", "a b.json"} {
		os.WriteFile(filepath.Join(s.Dir, stray), b, 0o600)
	}
	if err := os.Symlink(s.metaPath("good"), filepath.Join(s.Dir, "link.json")); err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Name != "good" {
		t.Errorf("list: %+v %v", list, err)
	}
}
