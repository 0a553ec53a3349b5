package qemu

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestHugePagesInherited: a process started as QEMU is (startWithHugePages)
// reports transparent huge pages off, unless its spec asked for them.
func TestHugePagesInherited(t *testing.T) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil || !strings.Contains(string(status), "THP_enabled:") {
		t.Skip("this kernel does not report THP_enabled in /proc/PID/status")
	}
	for _, tc := range []struct {
		on   bool
		want string
	}{{false, "THP_enabled: 0"}, {true, "THP_enabled: 1"}, {false, "THP_enabled: 0"}} {
		var out []byte
		if err := startWithHugePages(tc.on, func() (err error) {
			out, err = exec.Command("grep", "THP_enabled", "/proc/self/status").Output()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(strings.Fields(string(out)), " "); got != tc.want {
			t.Fatalf("huge pages %v: child reports %q, want %q", tc.on, got, tc.want)
		}
	}
}
