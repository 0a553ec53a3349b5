package hostwrite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/caplog"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Limits of one confined debugfs run. Variables so tests can tighten them.
var (
	// Timeout bounds the whole run: a crafted image must not hang a push
	// (a healthy 196 MiB / 1,000-file write takes ~1 s).
	Timeout = 5 * time.Minute
	// CPUSeconds bounds debugfs's CPU time (RLIMIT_CPU).
	CPUSeconds uint64 = 240
	// MemoryBytes bounds its address space (RLIMIT_AS): bitmaps and
	// caches of a workspace disk take a few MiB.
	MemoryBytes uint64 = 1 << 30
	// MaxStderr bounds what is kept of its error output.
	MaxStderr = 16 << 10
)

// ErrWrite: debugfs refused or failed a command; the image is not to be
// used (the caller discards it).
var ErrWrite = errors.New("host write failed")

// ErrUnconfinable: this host cannot confine debugfs (no Landlock, or a
// binary that does not dispatch HiddenArg); the caller pushes through the
// guest.
var ErrUnconfinable = errors.New("debugfs cannot be confined on this host")

// tool is the binary that becomes the confined tool: one that hands
// HiddenArg to Main (pyro); unset, nothing is confined (ErrUnconfinable).
var tool atomic.Pointer[string]

// UseTool names binary, which must hand HiddenArg to Main as pyro's main
// does, as the confined tool, unless one is named already: pyro's main
// names itself, the SDK the pyro binary it runs supervisors with, a test
// main that dispatches HiddenArg its own binary. Any other binary given
// HiddenArg would run as itself, unconfined.
func UseTool(binary string) { tool.CompareAndSwap(nil, &binary) }

// DebugfsEnv is the environment of every debugfs run: no pager, C locale.
var DebugfsEnv = []string{"PATH=/usr/sbin:/sbin:/usr/bin:/bin", "PAGER=__none__", "DEBUGFS_PAGER=__none__", "LC_ALL=C"}

// ReadCommand returns a debugfs run with args (which name the image as
// ImagePath) confined as Main says, able to read the image f and nothing
// else on the host but the program directories; ErrUnconfinable when this
// binary or kernel cannot confine it (the caller may run debugfs as it
// is). ctx ends it.
func ReadCommand(ctx context.Context, f *os.File, args ...string) (*exec.Cmd, error) {
	return confined(ctx, 0, []*os.File{f}, args...)
}

// ImagePath is how a confined debugfs names its image.
var ImagePath = imagePath

// confined returns debugfs with args run through Main with the files
// (image, then tree) as its descriptors 3 and 4; size 0 reads only.
func confined(ctx context.Context, size int64, files []*os.File, args ...string) (*exec.Cmd, error) {
	self := tool.Load()
	if self == nil || !Confinable() {
		return nil, ErrUnconfinable
	}
	bin, err := exec.LookPath("debugfs")
	if err != nil {
		for _, p := range []string{"/usr/sbin/debugfs", "/sbin/debugfs"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
				break
			}
		}
		if err != nil {
			return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "install e2fsprogs", "find debugfs")
		}
	}
	cmd := exec.CommandContext(ctx, *self, append([]string{HiddenArg, strconv.FormatInt(size, 10), bin}, args...)...)
	cmd.ExtraFiles = files
	cmd.Env = DebugfsEnv
	cmd.Dir = "/"
	cmd.SysProcAttr = Confine()
	return cmd, nil
}

// Write runs script (from Script(tree, ...)) against the ext4 image at
// image, which nothing else has open, with debugfs confined (see the
// package comment). The image's size is its file-size limit: debugfs never
// grows it. When Write returns nil the image is on stable storage: the
// tool's own syncs do nothing (hostcompat.ConfineTool), so Write starts
// the image's writeback while debugfs runs and syncs it once at the end,
// which then waits for little.
func Write(ctx context.Context, image, tree string, script []byte) error {
	img, err := os.OpenFile(image, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer img.Close()
	fi, err := img.Stat()
	if err != nil {
		return err
	}
	src, err := os.Open(tree)
	if err != nil {
		return err
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	// -f -: commands from stdin. The image is opened by the first of them.
	cmd, err := confined(context.Background(), fi.Size(), []*os.File{img, src}, "-f", "-")
	if err != nil {
		return err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = io.Discard
	stderr := &caplog.Head{Max: MaxStderr}
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		stdin.Close()
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "install e2fsprogs", "start debugfs")
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	kill := func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	go func() {
		_, _ = io.Copy(stdin, io.MultiReader(
			strings.NewReader("open -w "+q(imagePath)+"\n"), bytes.NewReader(script), strings.NewReader("close\nquit\n")))
		stdin.Close()
	}()
	var werr error
	tick := time.NewTicker(WritebackEvery)
	defer tick.Stop()
	writeback(img)
wait:
	for {
		select {
		case werr = <-done:
			break wait
		case <-tick.C:
			writeback(img)
		case <-ctx.Done():
			kill()
			<-done
			return errdefs.New(errdefs.ErrUnavailable, "the workspace image may be damaged; push to the running workspace instead",
				"writing the workspace image on the host took longer than %s", Timeout)
		}
	}
	kill() // anything debugfs left in its group
	if cmd.ProcessState != nil && cmd.ProcessState.ExitCode() == exitUnconfinable {
		return ErrUnconfinable
	}
	if msg := complaints(stderr.String()); werr != nil || msg != "" {
		if werr != nil && msg == "" {
			msg = werr.Error()
		}
		return fmt.Errorf("%w: debugfs: %s", ErrWrite, msg)
	}
	if err := unix.Fdatasync(int(img.Fd())); err != nil {
		return fmt.Errorf("sync the written image: %w", err)
	}
	return nil
}

// WritebackEvery is how often Write starts the writeback of what debugfs
// wrote so far (so the final sync waits for the last part only).
var WritebackEvery = 100 * time.Millisecond

// writeback starts writing f's dirty pages to its disk, without waiting.
func writeback(f *os.File) {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}

// complaints returns debugfs's error output without its banner: debugfs
// reports a failed command on stderr and goes on, exit status 0.
func complaints(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || (strings.HasPrefix(l, "debugfs ") && strings.Contains(l, "(")) {
			continue
		}
		out = append(out, l)
		if len(out) == 5 {
			break
		}
	}
	return strings.Join(out, "; ")
}

// limit sets the calling process's rlimits for the tool it execs next
// (Main: after the Go runtime started its threads, which RLIMIT_AS and
// RLIMIT_NPROC would refuse, and after every capability is dropped: a
// limit above the hard one it inherited is that hard one).
func limit(fileSize uint64) error {
	for _, l := range []struct {
		res int
		val uint64
	}{
		{unix.RLIMIT_CPU, CPUSeconds},
		{unix.RLIMIT_AS, MemoryBytes},
		{unix.RLIMIT_FSIZE, fileSize},
		{unix.RLIMIT_NOFILE, 64},
		{unix.RLIMIT_NPROC, 0},
		{unix.RLIMIT_CORE, 0},
	} {
		if l.res == unix.RLIMIT_NPROC && os.Geteuid() == 0 {
			continue // root ignores it; and uid 0's count is the host's
		}
		var cur unix.Rlimit
		if err := unix.Getrlimit(l.res, &cur); err != nil {
			return err
		}
		rl := unix.Rlimit{Cur: min(l.val, cur.Max), Max: min(l.val, cur.Max)}
		if err := unix.Setrlimit(l.res, &rl); err != nil {
			return err
		}
	}
	return nil
}
