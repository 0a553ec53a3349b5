package pyro

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// fakeGuest plays the agent of a checkpointed, chained workspace (exec, the
// quiet report, the quiet exec's epoch check, freeze with a listing) and
// QEMU's side of its layers (the node the guest writes; a write grows that
// layer's file as QEMU allocating a cluster does).
type fakeGuest struct {
	t   *testing.T
	l   workspace.Layers
	mu  sync.Mutex
	ep  uint64
	ls  []agentapi.LayerEntry // the upper layer's listing
	top string                // the layer file QEMU writes

	freezes, pushes, switches, refused, runs, flushes, reports int
	// onRun, when set, is called as a command starts (g.mu held).
	onRun func()
	// onReport, when set, is called as a quiet report is asked for
	// (g.mu not held).
	onReport func()
}

func (g *fakeGuest) handler() http.Handler {
	mux := http.NewServeMux()
	exec := func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		defer g.mu.Unlock()
		if r.URL.Path == agentapi.PathExecQuiet {
			if e, _ := strconv.ParseUint(r.URL.Query().Get("expect"), 10, 64); e != g.ep {
				g.refused++
				w.WriteHeader(http.StatusPreconditionFailed)
				_, _ = io.WriteString(w, `{"error":"the guest changed","category":"failed_precondition"}`)
				return
			}
		}
		var req agentapi.ExecRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		g.ep++
		g.runs++
		if g.onRun != nil {
			g.onRun()
		}
		// "write NAME" writes a file; anything else writes nothing.
		if len(req.Argv) == 2 && req.Argv[0] == "write" {
			g.ls = append(g.ls, agentapi.LayerEntry{Path: req.Argv[1], Kind: "file", Size: 1})
			f, err := os.OpenFile(g.l.Path(g.top), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				g.t.Errorf("guest write to %s: %v", g.top, err)
			} else {
				_, _ = f.Write(make([]byte, 64<<10))
				f.Close()
			}
		}
		_ = json.NewEncoder(w).Encode(agentapi.Event{Type: agentapi.EventExit, Result: &agentapi.ExecResult{}})
	}
	mux.HandleFunc("POST "+agentapi.PathExec, exec)
	mux.HandleFunc("POST "+agentapi.PathExecQuiet, exec)
	mux.HandleFunc("GET "+agentapi.PathQuiet, func(w http.ResponseWriter, r *http.Request) {
		if g.onReport != nil {
			g.onReport()
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		g.reports++
		m := agentapi.LayerManifest{Entries: append([]agentapi.LayerEntry{}, g.ls...)}
		_ = json.NewEncoder(w).Encode(&agentapi.QuietReport{Epoch: g.ep, Manifest: &m})
	})
	mux.HandleFunc("POST "+agentapi.PathLayerFreeze, func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.ep++
		g.freezes++
		_ = json.NewEncoder(w).Encode(agentapi.LayerManifest{Entries: append([]agentapi.LayerEntry{}, g.ls...)})
	})
	mux.HandleFunc("POST "+agentapi.PathLayerThaw, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "{}")
	})
	return mux
}

// bump moves the guest on behind the host's back (a call of another
// client): the next quiet exec must be refused.
func (g *fakeGuest) bump() { g.mu.Lock(); g.ep++; g.mu.Unlock() }

func (g *fakeGuest) agent(t *testing.T) *agentapi.Client { return agentServing(g.handler()) }

// agentServing is an agent client whose "guest" is h, reached over a
// yamux session on a pipe as the real agent is.
func agentServing(h http.Handler) *agentapi.Client {
	return agentapi.NewClient(func(context.Context) (net.Conn, error) {
		host, guest := net.Pipe()
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = io.Discard
		sess, err := yamux.Server(guest, cfg)
		if err != nil {
			return nil, err
		}
		go func() { _ = (&http.Server{Handler: h}).Serve(sess) }()
		return host, nil
	})
}

// fakeQEMU replaces QEMU's side of the layer switches for the test.
func (g *fakeGuest) fakeQEMU(t *testing.T) {
	old := [...]any{qemuPush, qemuStage, qemuSwitch, qemuUnstage, qemuLiveNode, qemuFlush}
	t.Cleanup(func() {
		qemuFlush = old[5].(func(context.Context, vmdir.Dir) error)
		qemuPush = old[0].(func(context.Context, vmdir.Dir, string) error)
		qemuStage = old[1].(func(context.Context, vmdir.Dir, string, string) (bool, error))
		qemuSwitch = old[2].(func(context.Context, vmdir.Dir, string, bool) error)
		qemuUnstage = old[3].(func(context.Context, vmdir.Dir, string) error)
		qemuLiveNode = old[4].(func(context.Context, vmdir.Dir) (string, error))
	})
	staged := map[string]bool{}
	rel := func(path string) string { r, _ := filepath.Rel(g.l.Dir, path); return r }
	qemuFlush = func(context.Context, vmdir.Dir) error {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.flushes++
		return nil
	}
	qemuPush = func(_ context.Context, _ vmdir.Dir, path string) error {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.pushes++
		g.top = rel(path)
		return nil
	}
	qemuStage = func(_ context.Context, _ vmdir.Dir, path, _ string) (bool, error) {
		g.mu.Lock()
		defer g.mu.Unlock()
		staged[rel(path)] = true
		return false, nil
	}
	qemuSwitch = func(_ context.Context, _ vmdir.Dir, path string, _ bool) error {
		g.mu.Lock()
		defer g.mu.Unlock()
		if !staged[rel(path)] {
			return fmt.Errorf("no node %s", qemu.NodeName(path))
		}
		g.switches++
		g.top = rel(path)
		return nil
	}
	qemuUnstage = func(_ context.Context, _ vmdir.Dir, path string) error {
		g.mu.Lock()
		defer g.mu.Unlock()
		delete(staged, rel(path))
		return nil
	}
	qemuLiveNode = func(context.Context, vmdir.Dir) (string, error) {
		g.mu.Lock()
		defer g.mu.Unlock()
		return qemu.NodeName(g.l.Path(g.top)), nil
	}
}

// TestExecCheckpointed drives execCheckpointed against a fake guest and a
// fake QEMU: after a writing exec the next exec's checkpoint freezes a new
// layer (from the quiet report: no freeze round trip, one switch to the
// overlay made ahead), after an exec that wrote nothing it names the
// frozen layer already there (no freeze, no switch), and a guest that
// moved on since its report refuses the quiet exec, whose checkpoint is
// then taken the usual way (one freeze) and not kept twice.
func TestExecCheckpointed(t *testing.T) {
	dir, rec := chainableWorkspace(t)
	g := &fakeGuest{t: t, l: layersOf(dir, rec), top: "workspace.ext4", ep: 100}
	g.fakeQEMU(t)
	c := &Client{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cps := checkpointsOf(dir)

	type counts struct{ freezes, pushes, switches, refused, runs, checkpoints int }
	now := func() counts {
		g.mu.Lock()
		defer g.mu.Unlock()
		list, _ := cps.List()
		return counts{g.freezes, g.pushes, g.switches, g.refused, g.runs, len(list)}
	}
	exec := func(cmd ...string) (before, after counts, ref workspace.LayerRef) {
		t.Helper()
		before = now()
		if _, err := c.execCheckpointed(ctx, dir, rec, g.agent(t), ExecOptions{Command: cmd}); err != nil {
			t.Fatalf("exec %v: %v", cmd, err)
		}
		after = now()
		last := cps.Last()
		ref, ok, err := cps.LayerOf(last, g.l)
		if err != nil || !ok {
			t.Fatalf("checkpoint %d before %v: %v %v", last, cmd, ok, err)
		}
		return before, after, ref
	}

	// No report yet: the usual checkpoint (a freeze).
	b, a, ref1 := exec("write", "a")
	if a.freezes != b.freezes+1 || a.checkpoints != 1 || a.runs != 1 {
		t.Fatalf("first exec: %+v -> %+v", b, a)
	}
	// After a writing exec: a new frozen layer, from the quiet report.
	b, a, ref2 := exec("write", "b")
	if a.freezes != b.freezes || a.checkpoints != 2 || a.runs != b.runs+1 {
		t.Fatalf("exec after a write: %+v -> %+v", b, a)
	}
	if ref2.Layer == ref1.Layer || a.switches+a.pushes != b.switches+b.pushes+1 {
		t.Fatalf("the write of the exec before was not frozen: checkpoint layers %s, %s; %+v -> %+v", ref1.Layer, ref2.Layer, b, a)
	}
	if a.switches != b.switches+1 {
		t.Fatalf("the overlay made ahead was not used: %+v -> %+v", b, a)
	}
	// Again after a write; then after an exec that wrote nothing the
	// checkpoint names the layer frozen already.
	_, _, ref3 := exec("true")
	if ref3.Layer == ref2.Layer {
		t.Fatalf("checkpoint after the write of b names %s again", ref3.Layer)
	}
	b, a, ref4 := exec("true")
	if a.freezes != b.freezes || a.switches != b.switches || a.pushes != b.pushes || ref4.Layer != ref3.Layer || a.checkpoints != b.checkpoints+1 {
		t.Fatalf("exec after a quiet exec: layers %s, %s; %+v -> %+v", ref3.Layer, ref4.Layer, b, a)
	}
	// The guest moved on since its report: the quiet exec is refused and
	// the checkpoint taken the usual way, once.
	g.bump()
	b, a, _ = exec("write", "c")
	if a.refused != b.refused+1 || a.freezes != b.freezes+1 || a.runs != b.runs+1 || a.checkpoints != b.checkpoints+1 {
		t.Fatalf("exec after the guest moved on: %+v -> %+v", b, a)
	}
	// Undo points are the states before each command (the refused
	// checkpoint's number is not reused).
	list, err := cps.List()
	if err != nil || len(list) != 5 {
		t.Fatalf("checkpoints %+v %v", list, err)
	}
	for i, want := range []int{0, 1, 2, 2, 2} {
		m, err := cps.Manifest(list[i].Number)
		if err != nil || len(m.Entries) != want {
			t.Errorf("checkpoint %d lists %d entries, want %d (%v)", list[i].Number, len(m.Entries), want, err)
		}
	}
}

// A switch whose answer is lost because the caller was cancelled (the
// MCP request ended meanwhile) may have happened all the same: the layer
// the guest now writes must stay the named top with its file, never be
// deleted under QEMU with the name put back on the frozen layer below.
func TestSwitchCancelledAfterQEMUSwitched(t *testing.T) {
	dir, rec := chainableWorkspace(t)
	l := layersOf(dir, rec)
	g := &fakeGuest{t: t, l: l, top: "workspace.ext4"}
	g.fakeQEMU(t)
	if err := stageNext(context.Background(), dir, l, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	switched := qemuSwitch
	qemuSwitch = func(ctx context.Context, dir vmdir.Dir, path string, drop bool) error {
		err := switched(ctx, dir, path, drop)
		cancel() // QEMU switched; its answer is lost with the caller
		return fmt.Errorf("qmp: %w %v", context.Canceled, err)
	}
	live := qemuLiveNode
	qemuLiveNode = func(ctx context.Context, dir vmdir.Dir) (string, error) {
		if err := ctx.Err(); err != nil {
			return "", err // as dialling QMP would
		}
		return live(ctx, dir)
	}
	_, _, err := pushTop(ctx, dir, l, nil)
	g.mu.Lock()
	writes := g.top
	g.mu.Unlock()
	top, terr := l.Top()
	if terr != nil || top != writes {
		t.Errorf("QEMU writes %s, the named top is %s (%v); push: %v", writes, top, terr, err)
	}
	if _, serr := os.Stat(l.Path(writes)); serr != nil {
		t.Errorf("the layer QEMU writes is gone: %v", serr)
	}
}

// chainableWorkspace is a checkpointed workspace's directory and record
// with a 1 GiB sparse disk, and a socket at its QMP path: that makes it
// chainable (fakeQEMU answers there).
func chainableWorkspace(t *testing.T) (vmdir.Dir, instance.Record) {
	t.Helper()
	d := t.TempDir()
	dir := vmdir.Dir(d)
	runningQEMU(t, dir)
	rec := instance.Record{ID: "ws", WorkspaceBase: filepath.Join(d, "base.ext4"), WorkspaceDisk: filepath.Join(d, "workspace.ext4")}
	setMeta(&rec, workspaceMeta{Checkpoints: true})
	if err := os.WriteFile(rec.WorkspaceDisk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(rec.WorkspaceDisk, 1<<30); err != nil {
		t.Fatal(err)
	}
	return dir, rec
}
