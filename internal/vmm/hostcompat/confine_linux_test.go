package hostcompat

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestConfine runs confine in a child of this test binary (it needs
// CAP_SETPCAP, so root), which then execs the test binary once more: the
// program after the exec must hold no capability in any set, with
// no_new_privs and the seccomp filter, as the agent and its commands do.
func TestConfine(t *testing.T) {
	switch os.Getenv("PYRO_CONFINE_STAGE") {
	case "confine":
		if err := confine(); err != nil {
			fmt.Println("confine:", err)
			os.Exit(1)
		}
		env := []string{"PYRO_CONFINE_STAGE=check"}
		err := unix.Exec("/proc/self/exe", []string{os.Args[0], "-test.run=^TestConfine$", "-test.v"}, env)
		fmt.Println("exec:", err)
		os.Exit(1)
	case "check":
		b, err := os.ReadFile("/proc/self/status")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000",
			"CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"} {
			if !strings.Contains(string(b), want+"\n") {
				t.Errorf("after confine and exec, /proc/self/status lacks %q", want)
			}
		}
		fmt.Println("confine check done")
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("confine drops capabilities a non-root test does not have")
	}
	if nativeArch == 0 {
		t.Skip("no filter for this architecture")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestConfine$", "-test.v")
	cmd.Env = append(os.Environ(), "PYRO_CONFINE_STAGE=confine")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "confine check done") || strings.Contains(string(out), "FAIL") {
		t.Fatalf("confined child: %v\n%s", err, out)
	}
}
