package envstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// command describes one external tool invocation.
type command struct {
	name   string
	args   []string
	stdin  io.Reader
	stdout io.Writer // nil: captured with stderr into the error tail
	env    []string  // added to the environment
	dir    string    // working directory
	// privateMounts runs the tool in its own mount namespace, so mounts it
	// makes inside a build tree (proc, sys, devpts) vanish with it even if it
	// is killed. Only possible as root.
	privateMounts bool
}

// tailBuffer keeps the last max bytes written to it. A tool's stdout and
// stderr are copied into it by two goroutines at once, hence the lock.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

// runTool runs a build tool in its own process group. When ctx ends the group
// gets SIGTERM (so tools like mmdebstrap can clean up), then SIGKILL after a
// grace period. It returns the tool's stdout (when c.stdout is nil) and, on
// failure, an error holding the tail of its output.
func runTool(ctx context.Context, c command) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.name, c.args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	cmd.Env = append(cmd.Env, c.env...)
	cmd.Stdin = c.stdin
	cmd.Dir = c.dir
	var stdout bytes.Buffer
	tail := &tailBuffer{max: 4096}
	if c.stdout != nil {
		cmd.Stdout = c.stdout
	} else {
		cmd.Stdout = io.MultiWriter(&stdout, tail)
	}
	cmd.Stderr = tail
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if c.privateMounts && os.Geteuid() == 0 {
		cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS
	}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	if cmd.Process != nil {
		// Whatever is left of the group (grandchildren) goes too.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("%s: %w", c.name, ctx.Err())
	}
	if err != nil {
		msg := strings.TrimSpace(string(tail.buf))
		if msg != "" {
			return nil, fmt.Errorf("%s %s: %w: %s", c.name, strings.Join(c.args, " "), err, lastLines(msg, 15))
		}
		return nil, fmt.Errorf("%s %s: %w", c.name, strings.Join(c.args, " "), err)
	}
	return stdout.Bytes(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lookTool finds a tool on PATH or in the sbin directories, which a non-login
// root shell may lack on its PATH.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := d + "/" + name
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("not found")
}
