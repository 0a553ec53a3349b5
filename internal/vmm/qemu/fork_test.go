package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// fakeQMP answers QMP commands on dir's socket from answer (command name
// to reply value; nil: {}), and records the commands and their arguments
// in order.
type fakeQMP struct {
	mu     sync.Mutex
	cmds   []string
	args   []json.RawMessage              // of cmds[i]
	answer func(cmd string) (any, string) // reply, or an error description
	encs   []*json.Encoder                // of the open connections, under mu
}

// emit sends an event on every open connection.
func (f *fakeQMP) emit(event string, data any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, enc := range f.encs {
		_ = enc.Encode(map[string]any{"event": event, "data": data})
	}
}

// send writes one reply under mu (events may be written meanwhile).
func (f *fakeQMP) send(enc *json.Encoder, v any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = enc.Encode(v)
}

func (f *fakeQMP) serve(t *testing.T, path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.conn(c)
		}
	}()
}

func (f *fakeQMP) conn(c net.Conn) {
	defer c.Close()
	enc := json.NewEncoder(c)
	f.send(enc, map[string]any{"QMP": map[string]any{}})
	f.mu.Lock()
	f.encs = append(f.encs, enc)
	f.mu.Unlock()
	r := bufio.NewScanner(c)
	for r.Scan() {
		var msg struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
		}
		if json.Unmarshal(r.Bytes(), &msg) != nil {
			return
		}
		f.mu.Lock()
		f.cmds = append(f.cmds, msg.Execute)
		f.args = append(f.args, msg.Arguments)
		f.mu.Unlock()
		ret, fail := any(map[string]any{}), ""
		if f.answer != nil && msg.Execute != "qmp_capabilities" {
			if v, e := f.answer(msg.Execute); v != nil || e != "" {
				ret, fail = v, e
			}
		}
		if fail != "" {
			f.send(enc, map[string]any{"error": map[string]any{"class": "GenericError", "desc": fail}})
			continue
		}
		f.send(enc, map[string]any{"return": ret})
	}
}

func (f *fakeQMP) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.cmds)
}

// argsOf returns the arguments of every call of cmd, in order.
func (f *fakeQMP) argsOf(cmd string) []json.RawMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []json.RawMessage
	for i, c := range f.cmds {
		if c == cmd {
			out = append(out, f.args[i])
		}
	}
	return out
}

func liveSaveFixture(t *testing.T, migration string) (*fakeQMP, vmdir.Dir, *os.File) {
	t.Helper()
	dir := vmdir.Dir(t.TempDir())
	status := "running"
	var mu sync.Mutex
	f := &fakeQMP{answer: func(cmd string) (any, string) {
		mu.Lock()
		defer mu.Unlock()
		switch cmd {
		case "migrate":
			if migration == "completed" {
				status = "postmigrate"
			}
		case "query-migrate":
			return map[string]any{"status": migration, "downtime": 7, "error-desc": "no space left on device"}, ""
		case "query-status":
			return map[string]any{"status": status}, ""
		case "stop":
			status = "paused"
		case "cont":
			status = "running"
		}
		return nil, ""
	}}
	f.serve(t, dir.Path(vmdir.QMPSock))
	state, err := os.Create(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { state.Close() })
	return f, dir, state
}

// A live save migrates, runs whilePaused while the guest is paused after
// the migration, then resumes it, and says the RAM was a file when it was.
func TestSaveLiveOrder(t *testing.T) {
	f, dir, state := liveSaveFixture(t, "completed")
	var seen []string
	_, err := (&Backend{}).SaveLive(context.Background(), dir, state, vmm.LiveSaveHooks{WhilePaused: func(context.Context) error {
		seen = f.commands()
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.Index(seen, "migrate"); i < 0 || slices.Contains(seen, "cont") || seen[len(seen)-1] != "query-migrate" {
		t.Fatalf("whilePaused ran after %v: want after the migration completed, before cont", seen)
	}
	all := f.commands()
	if all[len(all)-1] != "cont" {
		t.Fatalf("commands %v: the guest was not resumed last", all)
	}
	if !slices.Contains(all, "getfd") {
		t.Fatalf("commands %v: want the state fd handed over", all)
	}
	// The guest is paused before the migration starts (not live: a TCG
	// live migration lost guest writes, so forks restored a RAM older
	// than their vCPU and oopsed at once).
	if s, m := slices.Index(all, "stop"), slices.Index(all, "migrate"); s < 0 || s > m {
		t.Fatalf("commands %v: want stop before migrate", all)
	}
}

// A copy that fails while paused still resumes the source, and the error
// comes back; so does a migration that fails (a full disk).
func TestSaveLiveResumesOnFailure(t *testing.T) {
	f, dir, state := liveSaveFixture(t, "completed")
	boom := errors.New("disk copy failed")
	_, err := (&Backend{}).SaveLive(context.Background(), dir, state, vmm.LiveSaveHooks{WhilePaused: func(context.Context) error { return boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("err %v, want the copy's error", err)
	}
	if c := f.commands(); c[len(c)-1] != "cont" {
		t.Fatalf("commands %v: source not resumed", c)
	}

	f, dir, state = liveSaveFixture(t, "failed")
	called := false
	_, err = (&Backend{}).SaveLive(context.Background(), dir, state, vmm.LiveSaveHooks{WhilePaused: func(context.Context) error { called = true; return nil }})
	if err == nil || called {
		t.Fatalf("failed migration: err %v, whilePaused called %v", err, called)
	}
	if c := f.commands(); !slices.Contains(c, "query-status") {
		t.Fatalf("commands %v: the source's state was not checked after a failed save", c)
	}
}

// A live save lets go of the agent session first and waits until the
// guest closed its agent port before it migrates: the saved agent waits
// for a new host. An event of another port, or one read before the
// release, does not count.
func TestSaveLiveReleasesFirst(t *testing.T) {
	f, dir, state := liveSaveFixture(t, "completed")
	// Before the release: the open event of the source's own connection.
	f.emit("VSERPORT_CHANGE", map[string]any{"id": agentPortID, "open": true})
	var atRelease []string
	res, err := (&Backend{}).SaveLive(context.Background(), dir, state, vmm.LiveSaveHooks{
		Release: func() bool {
			atRelease = f.commands()
			go func() {
				time.Sleep(30 * time.Millisecond)
				f.emit("VSERPORT_CHANGE", map[string]any{"id": "console", "open": false})
				time.Sleep(30 * time.Millisecond)
				f.emit("VSERPORT_CHANGE", map[string]any{"id": agentPortID, "open": false})
			}()
			return true
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(atRelease, "migrate") {
		t.Fatalf("released after %v: want before the migration", atRelease)
	}
	if !res.Released || res.ReleaseMS < 50 {
		t.Fatalf("result %+v: want released after the agent port's close event", res)
	}
	if c := f.commands(); c[len(c)-1] != "cont" || !slices.Contains(c, "migrate") {
		t.Fatalf("commands %v: want a migration and the guest resumed", c)
	}
}

// A caller that keeps its session (a call in flight) is saved with it,
// without waiting; a guest that never closes its port after the release
// is not saved at all (its forks could not know whether their agent still
// holds the session).
func TestSaveLiveWithoutRelease(t *testing.T) {
	f, dir, state := liveSaveFixture(t, "completed")
	res, err := (&Backend{}).SaveLive(context.Background(), dir, state, vmm.LiveSaveHooks{Release: func() bool { return false }})
	if err != nil || res.Released {
		t.Fatalf("kept session: %+v %v", res, err)
	}
	if !slices.Contains(f.commands(), "migrate") {
		t.Fatalf("commands %v: not saved", f.commands())
	}

	defer func(d time.Duration) { releaseTimeout = d }(releaseTimeout)
	releaseTimeout = 100 * time.Millisecond
	f, dir, state = liveSaveFixture(t, "completed")
	_, err = (&Backend{}).SaveLive(context.Background(), dir, state, vmm.LiveSaveHooks{Release: func() bool { return true }})
	if err == nil || slices.Contains(f.commands(), "migrate") {
		t.Fatalf("silent guest: err %v, commands %v; want an error and no migration", err, f.commands())
	}
}

// The restore of a fork waits until the agent port closed: a "closed"
// event, or a second "open" one (QEMU coalesces a close and reopen within
// a second into the last); the open event that loading the state itself
// reports does not count.
func TestWaitAgentReopened(t *testing.T) {
	ev := func(open bool) string {
		bs, _ := json.Marshal(map[string]any{"event": "VSERPORT_CHANGE", "data": map[string]any{"id": agentPortID, "open": open}})
		return string(bs)
	}
	for _, tc := range []struct {
		events []string
		ok     bool
	}{
		{[]string{ev(true), ev(false), ev(true)}, true},
		{[]string{ev(false), ev(true)}, true},
		{[]string{ev(true), ev(false)}, true},
		{[]string{ev(true), ev(true)}, true},
		{[]string{ev(true)}, false},
		{[]string{}, false},
	} {
		uq := unixPair(t, tc.events)
		ctx, cancel := context.WithTimeout(context.Background(), 300e6)
		err := waitAgentReopened(ctx, uq)
		cancel()
		if (err == nil) != tc.ok {
			t.Fatalf("events %v: err %v", tc.events, err)
		}
	}
}

// unixPair returns a qmp client whose peer has sent lines.
func unixPair(t *testing.T, lines []string) *qmp {
	t.Helper()
	p := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	for _, l := range lines {
		if _, err := peer.Write([]byte(l + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	uc := c.(*net.UnixConn)
	return &qmp{conn: uc, r: bufio.NewReader(uc)}
}
