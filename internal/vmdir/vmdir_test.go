package vmdir

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// A directory holding a read-only subdirectory (the seed staging tree a
// create killed during its build left) is removed all the same, so
// reconcile and delete do not fail on it for good. Root unlinks in
// read-only directories: as root the test reruns itself as nobody.
func TestRemoveReadOnlyInside(t *testing.T) {
	if os.Getuid() == 0 {
		tmp, err := os.MkdirTemp("", "pyro-vmdir-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		if err := os.Chmod(tmp, 0o777); err != nil {
			t.Fatal(err)
		}
		// The test binary's own directory is root's alone: run a copy.
		bin, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		self := filepath.Join(tmp, "vmdir.test")
		if err := os.WriteFile(self, bin, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(self, "-test.run=^TestRemoveReadOnlyInside$", "-test.count=1")
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			t.Fatalf("as nobody: %v\n%s", err, out)
		} else if err != nil {
			t.Skipf("cannot run as nobody: %v", err)
		}
		return
	}
	parent := t.TempDir()
	d, err := Open(parent, "ws1")
	if err != nil {
		t.Fatal(err)
	}
	ro := d.Path(".seed-1/tree/ro")
	if err := os.MkdirAll(ro, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "f"), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ro, 0o555); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Fatalf("left %s", ents[0].Name())
	}
}
