package statedir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func TestPrepareCreatesPrivateRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "a", "pyro")
	if err := Prepare(root); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(root)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("root %v %v", fi.Mode(), err)
	}
	if err := Prepare(root); err != nil { // an existing good root stays good
		t.Fatal(err)
	}
}

func wantRefused(t *testing.T, err error, words string) {
	t.Helper()
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), words) || !strings.Contains(err.Error(), "hint:") {
		t.Fatalf("want a failed precondition about %q with a hint, got %v", words, err)
	}
}

func TestRefusesRootWritableByOthers(t *testing.T) {
	root := filepath.Join(t.TempDir(), "pyro")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o777); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, Prepare(root), "writable by others")
	if err := os.Chmod(root, 0o770); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, Prepare(root), "writable by others")
}

func TestRefusesParentWritableByOthers(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(parent, 0o777); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, Prepare(filepath.Join(parent, "pyro")), "directory above the state directory")
	// A sticky world-writable parent (like /tmp) is fine: others cannot
	// rename or delete what is ours in it.
	if err := os.Chmod(parent, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	if err := Prepare(filepath.Join(parent, "pyro")); err != nil {
		t.Fatal(err)
	}
}

func TestRefusesRootOwnedByAnotherUser(t *testing.T) {
	root := filepath.Join(t.TempDir(), "pyro")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(root)
	// As another uid, the same directory is someone else's.
	wantRefused(t, Check(abs, uint32(os.Geteuid())+4242), "not by you")
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	if err := os.Chown(root, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, Prepare(root), "owned by uid 4242")
	// A parent owned by another (non-root) user is refused too.
	child := filepath.Join(root, "pyro")
	if err := os.Mkdir(child, 0o700); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, Prepare(child), "directory above the state directory")
}
