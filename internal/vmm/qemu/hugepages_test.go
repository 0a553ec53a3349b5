package qemu

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestNoHugePagesInherited: after noHugePages, a process started from this
// one (as QEMU is) reports transparent huge pages off.
func TestNoHugePagesInherited(t *testing.T) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil || !strings.Contains(string(status), "THP_enabled:") {
		t.Skip("this kernel does not report THP_enabled in /proc/PID/status")
	}
	if err := noHugePages(); err != nil {
		t.Skipf("PR_SET_THP_DISABLE: %v", err)
	}
	out, err := exec.Command("grep", "THP_enabled", "/proc/self/status").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(strings.Fields(string(out)), " "); got != "THP_enabled: 0" {
		t.Fatalf("child reports %q, want THP_enabled: 0", got)
	}
}
