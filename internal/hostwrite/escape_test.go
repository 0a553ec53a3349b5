package hostwrite

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Landlock confines opens, not a file's metadata nor a connect to a named
// unix socket: a subverted debugfs (played by python) that ran as the
// caller (root) could chmod any host file the caller owns (/etc/shadow
// 0666), reset times, connect to any root-owned socket (systemd's, the
// docker daemon's, a pyro supervisor's) or fork without bound. Each must
// fail in the confined tool.
func TestToolMetadataSocketsForks(t *testing.T) {
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1600000000, 0)
	if err := os.Chtimes(victim, old, old); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	probe := `
import os, socket, sys
ok = []
for name, f in [
    ("chmod", lambda: os.chmod(sys.argv[1], 0o666)),
    ("utime", lambda: os.utime(sys.argv[1], None)),
    ("chown", lambda: os.chown(sys.argv[1], 0, 0)),
    ("connect", lambda: socket.socket(socket.AF_UNIX).connect(sys.argv[2])),
    ("fork", lambda: os._exit(0) if os.fork() == 0 else os.wait()),
]:
    try:
        f(); ok.append(name)
    except OSError:
        pass
print(" ".join(ok))
`
	if got := confinedProbe(t, probe, victim, sock); got != "" {
		t.Errorf("the confined tool could: %s", got)
	}
	fi, err := os.Stat(victim)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || !fi.ModTime().Equal(old) {
		t.Errorf("host file changed: mode %v mtime %v", fi.Mode(), fi.ModTime())
	}
	select {
	case <-accepted:
		t.Error("the confined tool reached a host unix socket")
	default:
	}
}

// A descriptor pyro inherited without close-on-exec (from the MCP client
// or shell that started it) must not reach the confined tool: Landlock
// does not govern descriptors already open.
func TestToolGetsNoStrayDescriptors(t *testing.T) {
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("host file"), 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Open(victim, syscall.O_RDWR, 0) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	probe := "import os, sys\ntry:\n    os.pwrite(int(sys.argv[1]), b'PWNED', 0); print('wrote')\nexcept OSError:\n    pass\n"
	out := confinedProbe(t, probe, strconv.Itoa(fd))
	if b, _ := os.ReadFile(victim); string(b) != "host file" || out != "" {
		t.Fatalf("the confined tool wrote a host file through an inherited descriptor: %q (%s)", b, out)
	}
}

// confinedProbe runs the python program probe with args as the confined
// tool (Main, as Write starts it, with a scratch image and tree) and
// returns its trimmed output; python plays a subverted debugfs. It skips
// without python or where nothing can be confined.
func confinedProbe(t *testing.T, probe string, args ...string) string {
	t.Helper()
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3 to play the subverted tool")
	}
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	imgF, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer imgF.Close()
	treeF, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer treeF.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, append([]string{HiddenArg, "4096", py, "-S", "-c", probe}, args...)...)
	cmd.ExtraFiles = []*os.File{imgF, treeF}
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = Confine()
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState != nil && cmd.ProcessState.ExitCode() == exitUnconfinable {
		t.Skip("no Landlock on this kernel")
	}
	if err != nil {
		t.Fatalf("probe: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}
