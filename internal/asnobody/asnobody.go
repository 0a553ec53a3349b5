// Package asnobody reruns a test as the unprivileged user nobody. Tests of
// permission rules (a read-only directory refuses unlinks) prove nothing
// as root, who passes every such check, and the suite runs as root here.
package asnobody

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
)

// nobody is the uid and gid of the unprivileged account.
const nobody = 65534

// Rerun reports whether the caller must return: as root it has rerun
// test t in a copy of the test binary as nobody (failing t if that run
// failed, skipping it if nobody cannot run at all); as anyone else it
// returns false and the caller goes on with the test itself.
func Rerun(t *testing.T) bool {
	t.Helper()
	if os.Getuid() != 0 {
		return false
	}
	tmp, err := os.MkdirTemp("", "pyro-asnobody-")
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
	self := filepath.Join(tmp, filepath.Base(os.Args[0]))
	if err := os.WriteFile(self, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		t.Fatalf("as nobody: %v\n%s", err, out)
	} else if err != nil {
		t.Skipf("cannot run as nobody: %v", err)
	}
	return true
}
