package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func openShell(t *testing.T, c *agentapi.Client, req agentapi.ShellOpenRequest) agentapi.ShellInfo {
	t.Helper()
	if req.Cwd == "" {
		req.Cwd = t.TempDir()
	}
	// An interactive bash reads $HOME/.bashrc: keep the host's (pyenv
	// rehash and its lock, on this machine) out of the test.
	if req.Env == nil {
		req.Env = map[string]string{}
	}
	if req.Env["HOME"] == "" {
		req.Env["HOME"] = t.TempDir()
	}
	info, err := c.OpenShell(testCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CloseShell(testCtx(t), info.ShellID) })
	return info
}

// readUntil follows next_cursor from cursor until the output read so far
// contains want; it returns that output and the next cursor.
func readUntil(t *testing.T, c *agentapi.Client, id string, cursor int64, want string) (string, int64) {
	t.Helper()
	var sb strings.Builder
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := c.ReadShell(testCtx(t), id, agentapi.ShellReadRequest{Cursor: cursor, WaitMS: 200})
		if err != nil {
			t.Fatal(err)
		}
		if res.Dropped != nil || res.Cursor != cursor {
			t.Fatalf("unexpected drop: %+v (asked %d)", res, cursor)
		}
		sb.WriteString(res.Output)
		cursor = res.NextCursor
		if strings.Contains(sb.String(), want) {
			return sb.String(), cursor
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in shell output after 15s: %q", want, sb.String())
		}
		if res.State != agentapi.ShellRunning && !res.More {
			t.Fatalf("shell ended (%+v) without %q: %q", res, want, sb.String())
		}
	}
}

func TestShellBasics(t *testing.T) {
	c := newTestClient(t, Options{})
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	info := openShell(t, c, agentapi.ShellOpenRequest{Cwd: dir})
	if len(info.ShellID) != 12 || info.PID == 0 || info.Cols != 120 || info.Rows != 30 || info.State != agentapi.ShellRunning || info.Cwd != dir {
		t.Fatalf("info %+v", info)
	}
	w, err := c.WriteShell(testCtx(t), info.ShellID, "echo hi-$((40+2))", true)
	if err != nil || w.BytesWritten != len("echo hi-$((40+2))")+1 {
		t.Fatalf("write %+v %v", w, err)
	}
	_, cur := readUntil(t, c, info.ShellID, 0, "hi-42")
	// cd persists across writes; the terminal is what we asked for.
	if _, err := c.WriteShell(testCtx(t), info.ShellID, "cd sub", true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteShell(testCtx(t), info.ShellID, `echo "at:$(pwd):$TERM:$(stty size)"`, true); err != nil {
		t.Fatal(err)
	}
	readUntil(t, c, info.ShellID, cur, "at:"+filepath.Join(dir, "sub")+":xterm-256color:30 120")
	// Resize.
	if in, err := c.ResizeShell(testCtx(t), info.ShellID, 80, 24); err != nil || in.Cols != 80 || in.Rows != 24 {
		t.Fatalf("resize %+v %v", in, err)
	}
	c.WriteShell(testCtx(t), info.ShellID, `echo "size:$(stty size)"`, true)
	readUntil(t, c, info.ShellID, cur, "size:24 80")
	// A cursor past the end is refused.
	if _, err := c.ReadShell(testCtx(t), info.ShellID, agentapi.ShellReadRequest{Cursor: 1 << 40}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("cursor past end: %v", err)
	}
	list, err := c.ListShells(testCtx(t))
	if err != nil || len(list) == 0 {
		t.Fatalf("list %+v %v", list, err)
	}
}

func TestShellCursorContinuity(t *testing.T) {
	c := newTestClient(t, Options{})
	info := openShell(t, c, agentapi.ShellOpenRequest{})
	id := info.ShellID
	c.WriteShell(testCtx(t), id, "seq 1 3000; echo done-$((1+1))", true)
	// Many small reads, following next_cursor.
	var small strings.Builder
	var cur int64
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(small.String(), "done-2") {
		res, err := c.ReadShell(testCtx(t), id, agentapi.ShellReadRequest{Cursor: cur, MaxChars: 97, WaitMS: 100})
		if err != nil {
			t.Fatal(err)
		}
		if res.Cursor != cur || res.Dropped != nil || utf8.RuneCountInString(res.Output) > 97 {
			t.Fatalf("read at %d: %+v", cur, res)
		}
		if int64(len(res.Output)) != res.NextCursor-res.Cursor {
			t.Fatalf("cursor advanced %d for %d bytes", res.NextCursor-res.Cursor, len(res.Output))
		}
		small.WriteString(res.Output)
		cur = res.NextCursor
		if time.Now().After(deadline) {
			t.Fatalf("no end marker: %q", small.String())
		}
	}
	// One big read of the same range gives the same bytes.
	big, err := c.ReadShell(testCtx(t), id, agentapi.ShellReadRequest{Cursor: 0, MaxChars: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(big.Output, small.String()) {
		t.Fatalf("small reads differ from a big read")
	}
	// Every number appears once, in order.
	next := 1
	for _, line := range strings.Split(small.String(), "\r\n") {
		line = line[strings.LastIndexByte(line, '\r')+1:]
		if n, err := strconv.Atoi(line); err == nil && n == next {
			next++
		}
	}
	if next != 3001 {
		t.Fatalf("sequence broken at %d: %q", next, small.String()[:min(600, small.Len())])
	}
}

func TestShellDroppedRange(t *testing.T) {
	c := newTestClient(t, Options{})
	info := openShell(t, c, agentapi.ShellOpenRequest{BufferBytes: 1024})
	id := info.ShellID
	c.WriteShell(testCtx(t), id, "seq 1 5000; echo end-$((2+3))", true)
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := c.ReadShell(testCtx(t), id, agentapi.ShellReadRequest{Cursor: 0, WaitMS: 100})
		if err != nil {
			t.Fatal(err)
		}
		if res.Dropped != nil && strings.Contains(res.Output, "end-5") {
			if res.Dropped.From != 0 || res.Dropped.To != res.Cursor || res.Cursor < 20000 ||
				int64(len(res.Output)) != res.NextCursor-res.Cursor || len(res.Output) > 1024+256 {
				t.Fatalf("dropped read: cursor %d next %d dropped %+v len %d", res.Cursor, res.NextCursor, res.Dropped, len(res.Output))
			}
			// Reading from the reported cursor is not a drop.
			again, err := c.ReadShell(testCtx(t), id, agentapi.ShellReadRequest{Cursor: res.Cursor})
			if err != nil || again.Dropped != nil || again.Cursor != res.Cursor {
				t.Fatalf("re-read %+v %v", again, err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("last read %+v", res)
		}
	}
}

// shellChild waits for a process named comm in the shell's session.
func shellChild(t *testing.T, sid int, comm string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range listProcs() {
			if p.sid != sid || p.pid == sid {
				continue
			}
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/comm")
			if strings.TrimSpace(string(b)) == comm {
				return p.pid
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s in session %d", comm, sid)
	return 0
}

func TestShellSignalInterrupts(t *testing.T) {
	c := newTestClient(t, Options{})
	info := openShell(t, c, agentapi.ShellOpenRequest{})
	id := info.ShellID
	c.WriteShell(testCtx(t), id, "sleep 100", true)
	sleepPID := shellChild(t, info.PID, "sleep")
	res, err := c.SignalShell(testCtx(t), id, "SIGint")
	if err != nil || res.Signal != "SIGINT" || res.PGID == info.PID {
		t.Fatalf("signal %+v %v", res, err)
	}
	waitGone(t, sleepPID)
	c.WriteShell(testCtx(t), id, "echo back-$((3+4))", true)
	readUntil(t, c, id, 0, "back-7")
	if _, err := c.SignalShell(testCtx(t), id, "BOGUS"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bogus signal: %v", err)
	}
}

func TestShellsIndependentAndClose(t *testing.T) {
	c := newTestClient(t, Options{})
	a := openShell(t, c, agentapi.ShellOpenRequest{})
	b := openShell(t, c, agentapi.ShellOpenRequest{})
	if a.ShellID == b.ShellID {
		t.Fatal("same id")
	}
	c.WriteShell(testCtx(t), a.ShellID, "X=aaa", true)
	c.WriteShell(testCtx(t), b.ShellID, "X=bbb", true)
	c.WriteShell(testCtx(t), a.ShellID, `echo "val-$X-$((1))"`, true)
	c.WriteShell(testCtx(t), b.ShellID, `echo "val-$X-$((2))"`, true)
	outA, _ := readUntil(t, c, a.ShellID, 0, "val-aaa-1")
	outB, _ := readUntil(t, c, b.ShellID, 0, "val-bbb-2")
	if strings.Contains(outA, "bbb") || strings.Contains(outB, "aaa") {
		t.Fatalf("shells share state: %q / %q", outA, outB)
	}
	// A background job is killed with the shell.
	c.WriteShell(testCtx(t), a.ShellID, "sleep 200 &", true)
	bg := shellChild(t, a.PID, "sleep")
	if err := c.CloseShell(testCtx(t), a.ShellID); err != nil {
		t.Fatal(err)
	}
	waitGone(t, a.PID)
	waitGone(t, bg)
	for name, f := range map[string]func() error{
		"read":   func() error { _, err := c.ReadShell(testCtx(t), a.ShellID, agentapi.ShellReadRequest{}); return err },
		"write":  func() error { _, err := c.WriteShell(testCtx(t), a.ShellID, "x", true); return err },
		"signal": func() error { _, err := c.SignalShell(testCtx(t), a.ShellID, "INT"); return err },
		"close":  func() error { return c.CloseShell(testCtx(t), a.ShellID) },
	} {
		if err := f(); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), strconv.Quote(a.ShellID)) {
			t.Errorf("%s after close: %v", name, err)
		}
	}
	// b still works.
	c.WriteShell(testCtx(t), b.ShellID, `echo "still-$((5+5))"`, true)
	readUntil(t, c, b.ShellID, 0, "still-10")
}

func TestShellExitAndReset(t *testing.T) {
	c := newTestClient(t, Options{})
	a := openShell(t, c, agentapi.ShellOpenRequest{})
	b := openShell(t, c, agentapi.ShellOpenRequest{})
	c.WriteShell(testCtx(t), a.ShellID, "exit 3", true)
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := c.ReadShell(testCtx(t), a.ShellID, agentapi.ShellReadRequest{WaitMS: 100})
		if err != nil {
			t.Fatal(err)
		}
		if res.State == agentapi.ShellExited {
			if res.ExitCode == nil || *res.ExitCode != 3 {
				t.Fatalf("exit %+v", res)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shell did not exit: %+v", res)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := c.WriteShell(testCtx(t), a.ShellID, "x", true); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("write to exited shell: %v", err)
	}
	res, err := c.ResetShells(testCtx(t))
	if err != nil || res.Closed < 2 {
		t.Fatalf("reset %+v %v", res, err)
	}
	waitGone(t, b.PID)
	if list, err := c.ListShells(testCtx(t)); err != nil || len(list) != 0 {
		t.Fatalf("after reset %+v %v", list, err)
	}
}

func TestShellUTF8NeverSplit(t *testing.T) {
	c := newTestClient(t, Options{})
	info := openShell(t, c, agentapi.ShellOpenRequest{})
	id := info.ShellID
	c.WriteShell(testCtx(t), id, `for i in 1 2 3 4 5 6 7 8 9 10; do printf 'é€😀'; done; echo " fin-$((9*9))"`, true)
	var all strings.Builder
	var cur int64
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; !strings.Contains(all.String(), "fin-81"); i++ {
		res, err := c.ReadShell(testCtx(t), id, agentapi.ShellReadRequest{Cursor: cur, MaxChars: 1 + i%3, WaitMS: 100})
		if err != nil {
			t.Fatal(err)
		}
		if !utf8.ValidString(res.Output) || strings.ContainsRune(res.Output, utf8.RuneError) {
			t.Fatalf("read at %d split a character: %q", cur, res.Output)
		}
		all.WriteString(res.Output)
		cur = res.NextCursor
		if time.Now().After(deadline) {
			t.Fatalf("no marker: %q", all.String())
		}
	}
	if !strings.Contains(all.String(), strings.Repeat("é€😀", 10)+" fin-81") {
		t.Fatalf("output %q", all.String())
	}
}

func TestShellReadPartialRune(t *testing.T) {
	sh := &shell{id: "x", out: newOutBuf(1024), done: make(chan struct{})}
	euro := []byte("€")
	sh.out.Write([]byte("a"))
	sh.out.Write(euro[:2])
	res := sh.read(0, 10)
	if res.Output != "a" || res.NextCursor != 1 || res.More {
		t.Fatalf("partial: %+v", res)
	}
	sh.out.Write(euro[2:])
	res = sh.read(1, 10)
	if res.Output != "€" || res.NextCursor != 4 {
		t.Fatalf("complete: %+v", res)
	}
	// Invalid bytes are served (as U+FFFD) once output has ended.
	sh.out.Write([]byte{0xff, 'b', 0xe2})
	res = sh.read(4, 10)
	if res.Output != "\uFFFDb" || res.NextCursor != 6 {
		t.Fatalf("invalid: %+v", res)
	}
	sh.out.close()
	res = sh.read(6, 10)
	if res.Output != "\uFFFD" || res.NextCursor != 7 {
		t.Fatalf("ended: %+v", res)
	}
	// max_chars counts characters, More says there is more.
	res = sh.read(0, 2)
	if res.Output != "a€" || res.NextCursor != 4 || !res.More {
		t.Fatalf("max chars: %+v", res)
	}
}
