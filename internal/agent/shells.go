package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Shells are interactive shells on PTYs that live in the agent process
// across host connections. Their output is kept in a bounded buffer
// addressed by absolute byte cursors.

const (
	maxShells         = 64
	shellWriteTimeout = 10 * time.Second
	minShellBuffer    = 64
	maxShellDim       = 1000
)

// shellManager is an agent's shell table.
type shellManager struct {
	a      *Agent
	mu     sync.Mutex
	shells map[string]*shell

	inputrcOnce sync.Once
	inputrc     string // plainInputrc's path, "" if it could not be written
}

type shell struct {
	id        string
	argv      []string
	cwd       string
	pid       int
	startedAt time.Time
	ptmx      *os.File
	cg        *leaf // the shell's cgroup leaf; nil without a user cgroup
	out       *outBuf
	done      chan struct{} // closed once the shell process is reaped

	writeMu sync.Mutex

	mu       sync.Mutex
	cols     int
	rows     int
	exitCode *int
	closed   bool
}

func (sh *shell) info() agentapi.ShellInfo {
	_, end, _ := sh.out.bounds()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	in := agentapi.ShellInfo{
		ShellID:   sh.id,
		PID:       sh.pid,
		Cwd:       sh.cwd,
		Cols:      sh.cols,
		Rows:      sh.rows,
		State:     agentapi.ShellRunning,
		Argv:      sh.argv,
		StartedAt: sh.startedAt,
		EndCursor: end,
	}
	if sh.exitCode != nil {
		c := *sh.exitCode
		in.ExitCode, in.State = &c, agentapi.ShellExited
	}
	return in
}

// routes registers the shell endpoints.
func (m *shellManager) routes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+agentapi.PathShells, m.handleOpen)
	mux.HandleFunc("GET "+agentapi.PathShells, m.handleList)
	mux.HandleFunc("POST "+agentapi.PathShellsReset, m.handleReset)
	mux.HandleFunc("GET "+agentapi.PathShells+"/{id}", m.handleInfo)
	mux.HandleFunc("GET "+agentapi.PathShells+"/{id}/read", m.handleRead)
	mux.HandleFunc("POST "+agentapi.PathShells+"/{id}/write", m.handleWrite)
	mux.HandleFunc("POST "+agentapi.PathShells+"/{id}/signal", m.handleSignal)
	mux.HandleFunc("POST "+agentapi.PathShells+"/{id}/resize", m.handleResize)
	mux.HandleFunc("POST "+agentapi.PathShells+"/{id}/close", m.handleClose)
}

func (m *shellManager) get(id string) (*shell, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sh := m.shells[id]
	if sh == nil {
		return nil, errorf(errdefs.ErrNotFound, "no shell with id %q (it was closed or never opened)", id)
	}
	return sh, nil
}

func checkDims(cols, rows int) (int, int, error) {
	if cols == 0 {
		cols = agentapi.DefaultShellCols
	}
	if rows == 0 {
		rows = agentapi.DefaultShellRows
	}
	if cols < 1 || rows < 1 || cols > maxShellDim || rows > maxShellDim {
		return 0, 0, errorf(errdefs.ErrInvalidArgument, "terminal size %dx%d: cols and rows must be 1-%d", cols, rows, maxShellDim)
	}
	return cols, rows, nil
}

func (m *shellManager) handleOpen(w http.ResponseWriter, r *http.Request) {
	var req agentapi.ShellOpenRequest
	if err := decodeBody(r, &req); err != nil {
		m.a.fail(w, err)
		return
	}
	sh, err := m.open(req)
	if err != nil {
		m.a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sh.info())
}

func (m *shellManager) open(req agentapi.ShellOpenRequest) (*shell, error) {
	cols, rows, err := checkDims(req.Cols, req.Rows)
	if err != nil {
		return nil, err
	}
	bufBytes := req.BufferBytes
	if bufBytes == 0 {
		bufBytes = agentapi.DefaultShellBufferBytes
	}
	if bufBytes < minShellBuffer || bufBytes > agentapi.MaxShellBufferBytes {
		return nil, errorf(errdefs.ErrInvalidArgument, "buffer_bytes %d: must be %d-%d", req.BufferBytes, minShellBuffer, agentapi.MaxShellBufferBytes)
	}
	shellPath := "/bin/sh"
	if checkExecutable("/bin/bash") == nil {
		shellPath = "/bin/bash"
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = m.a.defaultWorkDir()
	}
	env := map[string]string{"TERM": "xterm-256color"}
	if rc := m.plainInputrc(); rc != "" {
		env["INPUTRC"] = rc
	}
	for k, v := range req.Env {
		env[k] = v
	}
	env, err = m.a.secrets.withEnv(env, req.SecretEnv)
	if err != nil {
		return nil, err
	}
	p, err := prepare(agentapi.ExecRequest{Argv: []string{shellPath, "-i"}, Env: env, Cwd: cwd}, m.a.env)
	if err != nil {
		return nil, errorf(errdefs.ErrInvalidArgument, "open shell: %v", err)
	}
	m.mu.Lock()
	n := len(m.shells)
	m.mu.Unlock()
	if n >= maxShells {
		return nil, errorf(errdefs.ErrFailedPrecondition, "%d shells are open (hint: close shells you no longer need)", n)
	}

	ptmx, tty, err := openPTY()
	if err != nil {
		return nil, errorf(errdefs.ErrUnavailable, "open shell: %v", err)
	}
	defer tty.Close()
	if err := setWinsize(ptmx, cols, rows); err != nil {
		ptmx.Close()
		return nil, errorf(errdefs.ErrUnavailable, "open shell: set terminal size: %v", err)
	}
	cmd := &exec.Cmd{
		Path:        shellPath,
		Args:        p.argv,
		Env:         p.env,
		Dir:         p.cwd,
		Stdin:       tty,
		Stdout:      tty,
		Stderr:      tty,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0},
	}
	cmd, cg, err := m.a.startUser(cmd, "shell")
	if err != nil {
		ptmx.Close()
		return nil, errorf(errdefs.ErrUnavailable, "open shell: start %s: %v", shellPath, err)
	}
	sh := &shell{
		id:        newShellID(),
		argv:      p.argv,
		cwd:       p.cwd,
		pid:       cmd.Process.Pid,
		startedAt: time.Now().UTC(),
		ptmx:      ptmx,
		cg:        cg,
		out:       newOutBuf(bufBytes),
		done:      make(chan struct{}),
		cols:      cols,
		rows:      rows,
	}
	go func() {
		// Ends with EIO once no process holds the terminal, or when the
		// shell is closed.
		// Secret values never reach the buffer, even split across
		// reads; cursors count the redacted output's bytes.
		lr := &liveRedactor{st: m.a.secrets, w: sh.out}
		_, _ = io.Copy(lr, ptmx)
		lr.Flush()
		sh.out.close()
	}()
	go func() {
		_ = cmd.Wait()
		code := -1
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			if ws.Signaled() {
				code = 128 + int(ws.Signal())
			} else {
				code = ws.ExitStatus()
			}
		}
		sh.mu.Lock()
		sh.exitCode = &code
		sh.mu.Unlock()
		close(sh.done)
	}()
	m.mu.Lock()
	m.shells[sh.id] = sh
	m.mu.Unlock()
	return sh, nil
}

// inputrcPath is where plainInputrc writes its readline settings.
const inputrcPath = "/run/pyro/inputrc"

// plainInputrc returns a readline init file that includes the system one
// and turns bracketed paste off, so output carries no \e[?2004h/l noise;
// "" if it cannot be written.
func (m *shellManager) plainInputrc() string {
	m.inputrcOnce.Do(func() {
		content := "set enable-bracketed-paste off\n"
		if _, err := os.Stat("/etc/inputrc"); err == nil {
			content = "$include /etc/inputrc\n" + content
		}
		if err := os.MkdirAll(filepath.Dir(inputrcPath), 0o755); err != nil {
			return
		}
		if err := os.WriteFile(inputrcPath, []byte(content), 0o644); err != nil {
			return
		}
		m.inputrc = inputrcPath
	})
	return m.inputrc
}

func newShellID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// openPTY opens a new PTY pair. The master is non-blocking and registered
// with the runtime poller, so reads can be interrupted by Close and writes
// can have deadlines.
func openPTY() (ptmx, tty *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	// TIOCGPTPEER opens the peer without a path lookup (Linux 4.13+).
	tfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(unix.TIOCGPTPEER), uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
		if err != nil {
			unix.Close(fd)
			return nil, nil, fmt.Errorf("get pty number: %w", err)
		}
		t, err := unix.Open("/dev/pts/"+strconv.Itoa(n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(fd)
			return nil, nil, fmt.Errorf("open pty peer: %w", err)
		}
		tfd = uintptr(t)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), os.NewFile(tfd, "pty"), nil
}

// ptyControl runs f on the master's descriptor without making it blocking.
func ptyControl(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var inner error
	if err := rc.Control(func(fd uintptr) { inner = fn(int(fd)) }); err != nil {
		return err
	}
	return inner
}

func setWinsize(f *os.File, cols, rows int) error {
	return ptyControl(f, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Col: uint16(cols), Row: uint16(rows)})
	})
}

// foregroundPgrp is the terminal's foreground process group.
func foregroundPgrp(f *os.File) (int, error) {
	var pgrp int
	err := ptyControl(f, func(fd int) error {
		var err error
		pgrp, err = unix.IoctlGetInt(fd, unix.TIOCGPGRP)
		return err
	})
	return pgrp, err
}

func (m *shellManager) handleList(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, agentapi.ShellList{Shells: m.list()})
}

// list is every shell, oldest first.
func (m *shellManager) list() []agentapi.ShellInfo {
	m.mu.Lock()
	list := make([]*shell, 0, len(m.shells))
	for _, sh := range m.shells {
		list = append(list, sh)
	}
	m.mu.Unlock()
	out := make([]agentapi.ShellInfo, 0, len(list))
	for _, sh := range list {
		out = append(out, sh.info())
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.StartedAt.Equal(b.StartedAt) {
			return a.StartedAt.Before(b.StartedAt)
		}
		return a.ShellID < b.ShellID
	})
	return out
}

func (m *shellManager) handleInfo(w http.ResponseWriter, r *http.Request) {
	sh, err := m.get(r.PathValue("id"))
	if err != nil {
		m.a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sh.info())
}

func queryInt(r *http.Request, key string, def int64) (int64, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, errorf(errdefs.ErrInvalidArgument, "%s %q is not a non-negative integer", key, v)
	}
	return n, nil
}

func (m *shellManager) handleRead(w http.ResponseWriter, r *http.Request) {
	sh, err := m.get(r.PathValue("id"))
	if err != nil {
		m.a.fail(w, err)
		return
	}
	cursor, maxChars, err := readWindow(r, sh.out, "shell", sh.id)
	if err != nil {
		m.a.fail(w, err)
		return
	}
	waitMS, err := queryInt(r, "wait_ms", 0)
	if err != nil {
		m.a.fail(w, err)
		return
	}
	if waitMS > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(min(waitMS, agentapi.MaxShellReadWaitMS))*time.Millisecond)
		sh.out.wait(ctx, cursor)
		cancel()
	}
	writeJSON(w, http.StatusOK, sh.read(cursor, int(maxChars)))
}

// readWindow parses a cursor read's cursor and max_chars (default
// DefaultShellMaxChars) and refuses a cursor past the end of out, which
// belongs to the shell or job named kind id.
func readWindow(r *http.Request, out *outBuf, kind, id string) (cursor, maxChars int64, err error) {
	if cursor, err = queryInt(r, "cursor", 0); err != nil {
		return 0, 0, err
	}
	if maxChars, err = queryInt(r, "max_chars", 0); err != nil {
		return 0, 0, err
	}
	if maxChars == 0 {
		maxChars = agentapi.DefaultShellMaxChars
	}
	if _, end, _ := out.bounds(); cursor > end {
		return 0, 0, errorf(errdefs.ErrInvalidArgument, "cursor %d is past the end of %s %q's output (%d bytes so far)", cursor, kind, id, end)
	}
	return cursor, maxChars, nil
}

// read serves output from cursor, at most maxChars characters, never
// splitting a UTF-8 sequence.
func (sh *shell) read(cursor int64, maxChars int) agentapi.ShellReadResponse {
	res := sh.readOutput(cursor, maxChars)
	in := sh.info()
	res.State, res.ExitCode = in.State, in.ExitCode
	return res
}

// readOutput is read without the state (jobs share it: jobs.go).
func (sh *shell) readOutput(cursor int64, maxChars int) agentapi.ShellReadResponse {
	data, start, end, ended := sh.out.snapshot(cursor)
	res := agentapi.ShellReadResponse{ShellID: sh.id, Cursor: start}
	if cursor < start {
		res.Dropped = &agentapi.ByteRange{From: cursor, To: start}
	}
	i, chars := 0, 0
	for i < len(data) && chars < maxChars {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 && !utf8.FullRune(data[i:]) && !ended {
			break // the rest of this character has not been printed yet
		}
		i += size
		chars++
	}
	res.Output = strings.ToValidUTF8(string(data[:i]), "\uFFFD")
	res.NextCursor = start + int64(i)
	res.More = res.NextCursor < end && chars >= maxChars
	return res
}

func (m *shellManager) handleWrite(w http.ResponseWriter, r *http.Request) {
	sh, err := m.get(r.PathValue("id"))
	if err != nil {
		m.a.fail(w, err)
		return
	}
	var req agentapi.ShellWriteRequest
	if err := decodeBody(r, &req); err != nil {
		m.a.fail(w, err)
		return
	}
	data := []byte(req.Input)
	if req.AppendNewline {
		data = append(data, '\r')
	}
	if sh.info().State != agentapi.ShellRunning {
		m.a.fail(w, errorf(errdefs.ErrFailedPrecondition, "shell %q has exited (hint: read its last output, then close it)", sh.id))
		return
	}
	sh.writeMu.Lock()
	_ = sh.ptmx.SetWriteDeadline(time.Now().Add(shellWriteTimeout))
	n, err := sh.ptmx.Write(data)
	sh.writeMu.Unlock()
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			m.a.fail(w, errorf(errdefs.ErrUnavailable, "shell %q: wrote %d of %d bytes: the terminal did not accept input for %s (the program is not reading)", sh.id, n, len(data), shellWriteTimeout))
			return
		}
		m.a.fail(w, errorf(errdefs.ErrFailedPrecondition, "shell %q: wrote %d of %d bytes: %v", sh.id, n, len(data), err))
		return
	}
	writeJSON(w, http.StatusOK, agentapi.ShellWriteResponse{ShellID: sh.id, BytesWritten: n})
}

var shellSignals = map[string]unix.Signal{
	"INT": unix.SIGINT, "TERM": unix.SIGTERM, "KILL": unix.SIGKILL, "HUP": unix.SIGHUP,
	"QUIT": unix.SIGQUIT, "USR1": unix.SIGUSR1, "USR2": unix.SIGUSR2, "WINCH": unix.SIGWINCH,
	"CONT": unix.SIGCONT, "STOP": unix.SIGSTOP, "TSTP": unix.SIGTSTP,
}

func (m *shellManager) handleSignal(w http.ResponseWriter, r *http.Request) {
	sh, err := m.get(r.PathValue("id"))
	if err != nil {
		m.a.fail(w, err)
		return
	}
	var req agentapi.ShellSignalRequest
	if err := decodeBody(r, &req); err != nil {
		m.a.fail(w, err)
		return
	}
	name := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(req.Signal)), "SIG")
	if name == "" {
		name = "INT"
	}
	sig, ok := shellSignals[name]
	if !ok {
		m.a.fail(w, errorf(errdefs.ErrInvalidArgument, "unknown signal %q: use INT, TERM, KILL, HUP, QUIT, USR1, USR2, WINCH, CONT, STOP or TSTP", req.Signal))
		return
	}
	if sh.info().State != agentapi.ShellRunning {
		m.a.fail(w, errorf(errdefs.ErrFailedPrecondition, "shell %q has exited", sh.id))
		return
	}
	pgrp, err := foregroundPgrp(sh.ptmx)
	if err != nil || pgrp <= 0 {
		pgrp = sh.pid
	}
	if err := unix.Kill(-pgrp, sig); err != nil {
		m.a.fail(w, errorf(errdefs.ErrFailedPrecondition, "shell %q: send SIG%s to process group %d: %v", sh.id, name, pgrp, err))
		return
	}
	writeJSON(w, http.StatusOK, agentapi.ShellSignalResponse{ShellID: sh.id, Signal: "SIG" + name, PGID: pgrp})
}

func (m *shellManager) handleResize(w http.ResponseWriter, r *http.Request) {
	sh, err := m.get(r.PathValue("id"))
	if err != nil {
		m.a.fail(w, err)
		return
	}
	var req agentapi.ShellResizeRequest
	if err := decodeBody(r, &req); err != nil {
		m.a.fail(w, err)
		return
	}
	cols, rows, err := checkDims(req.Cols, req.Rows)
	if err != nil {
		m.a.fail(w, err)
		return
	}
	// TIOCSWINSZ makes the kernel send SIGWINCH to the foreground group.
	if err := setWinsize(sh.ptmx, cols, rows); err != nil {
		m.a.fail(w, errorf(errdefs.ErrFailedPrecondition, "shell %q: resize: %v", sh.id, err))
		return
	}
	sh.mu.Lock()
	sh.cols, sh.rows = cols, rows
	sh.mu.Unlock()
	writeJSON(w, http.StatusOK, sh.info())
}

func (m *shellManager) handleClose(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	m.mu.Lock()
	sh := m.shells[id]
	delete(m.shells, id)
	m.mu.Unlock()
	if sh == nil {
		m.a.fail(w, errorf(errdefs.ErrNotFound, "no shell with id %q (it was closed or never opened)", id))
		return
	}
	sh.close()
	writeJSON(w, http.StatusOK, agentapi.ShellCloseResponse{ShellID: id, Closed: true})
}

func (m *shellManager) handleReset(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	list := make([]*shell, 0, len(m.shells))
	for _, sh := range m.shells {
		list = append(list, sh)
	}
	m.shells = map[string]*shell{}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, sh := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sh.close()
		}()
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, agentapi.ShellReset{Closed: len(list)})
}

// close kills every process in the shell's session (job-control shells
// put each job in its own process group) and releases the terminal.
func (sh *shell) close() {
	sh.mu.Lock()
	if sh.closed {
		sh.mu.Unlock()
		return
	}
	sh.closed = true
	sh.mu.Unlock()
	killSession := func() {
		_ = unix.Kill(-sh.pid, unix.SIGKILL)
		sh.cg.kill()
		for _, p := range listProcs() {
			if p.sid == sh.pid && p.state != 'Z' {
				_ = unix.Kill(p.pid, unix.SIGKILL)
			}
		}
	}
	killSession()
	select {
	case <-sh.done:
	case <-time.After(2 * time.Second):
	}
	killSession() // anything forked meanwhile
	sh.cg.remove()
	_ = sh.ptmx.Close()
}
