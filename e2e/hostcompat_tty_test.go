package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHostCompatNoHostTerminal: `pyro run --allow-host-compat` typed in a
// terminal boots the sandbox from the CLI process; a command in it must
// not reach that terminal. It tries to open /dev/tty (its controlling
// terminal, if it shares the CLI's session) and to push "INJECTED\n" into
// the terminal's input with TIOCSTI: the keystrokes the user's shell (here
// root's) would run after pyro exits.
func TestHostCompatNoHostTerminal(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	env = append(env, noQEMU)

	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()

	probe := `if (open(T, "+<", "/dev/tty")) { print "HOST-TTY\n"; ioctl(T, 0x5412, $_) for split //, "INJECTED\n"; } else { print "no tty: $!\n"; }`
	cmd := exec.Command(pyroBin, "run", "--json", "--allow-host-compat", baseEnv, "--", "perl", "-e", probe)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Run(); err != nil {
		t.Fatalf("pyro run: %v\nstdout: %s\nstderr: %s", err, out.String(), errb.String())
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s%s", err, out.String(), errb.String())
	}
	stdout, _ := m["stdout"].(string)
	t.Logf("sandbox said %q", stdout)
	if strings.Contains(stdout, "HOST-TTY") {
		t.Errorf("a host-compat command opened the terminal pyro run was typed in")
	}
	if !strings.Contains(stdout, "HOST-TTY") && !strings.Contains(stdout, "no tty") {
		t.Fatalf("probe did not run: %v", m)
	}
	// What the user's shell would read next from its terminal.
	// Non-blocking: an empty queue must not hang the test.
	fd := int(tty.Fd())
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	buf := make([]byte, 256)
	k, _ := unix.Read(fd, buf)
	if k > 0 && bytes.Contains(buf[:k], []byte("INJECTED")) {
		t.Errorf("the sandbox typed into the host terminal: %q", buf[:k])
	}
}
