package pyro

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// TestTidyAfterInSupervisor: after a checkpointed exec the housekeeping
// (next overlay made ahead, live top flushed) is the supervisor's, which
// gets the caller's caps and runs it after the call returned: nothing of
// it runs in the caller. A supervisor that does not tidy (404) leaves it
// to the caller, which does it before returning.
func TestTidyAfterInSupervisor(t *testing.T) {
	t.Setenv("PYRO_CHECKPOINT_MAX_COUNT", "7")
	for _, accepts := range []bool{true, false} {
		dir, rec := chainableWorkspace(t)
		g := &fakeGuest{t: t, l: layersOf(dir, rec), top: "workspace.ext4", ep: 100}
		g.fakeQEMU(t)
		asked := make(chan supervisor.TidyRequest, 10)
		lis, err := net.Listen("unix", dir.Path(vmdir.SupervisorSock))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != supervisor.PathTidy || !accepts {
				http.Error(w, `{"error":"not here","kind":"not_found"}`, http.StatusNotFound)
				return
			}
			var req supervisor.TidyRequest
			_ = json.NewDecoder(r.Body).Decode(&req)
			asked <- req
			w.WriteHeader(http.StatusAccepted)
		})}
		go srv.Serve(lis)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c := &Client{}
		for _, cmd := range []string{"a", "b", "c"} {
			if _, err := c.execCheckpointed(ctx, dir, rec, g.agent(t), ExecOptions{Command: []string{"write", cmd}}); err != nil {
				t.Fatal(err)
			}
		}
		cancel()
		srv.Close()
		_, staged := g.l.Next()
		g.mu.Lock()
		flushes, pushes, switches := g.flushes, g.pushes, g.switches
		g.mu.Unlock()
		if accepts {
			if len(asked) != 3 || staged || flushes != 0 {
				t.Fatalf("supervisor tidies: asked %d times, next overlay made here %v, %d flushes here", len(asked), staged, flushes)
			}
			if req := <-asked; req.MaxCount != 7 || !req.Quiet {
				t.Fatalf("tidy request %+v: not the caller's caps, or no quiet report asked for", req)
			}
			// Nothing made ahead: each checkpoint put a new overlay
			// over the top itself.
			if switches != 0 || pushes == 0 {
				t.Fatalf("%d switches to a staged overlay, %d pushes", switches, pushes)
			}
			continue
		}
		// Each writing exec's top frozen ahead here (a switch each but
		// the first's), so no flush was needed.
		if !staged || flushes != 0 || switches != 2 {
			t.Fatalf("caller tidies: next overlay made %v, %d flushes, %d switches", staged, flushes, switches)
		}
	}
}

// TestCheckpointRecordedBeforeCommand: the checkpoint's record (synced
// beside the command now) is written before the command starts, whole, and
// names its frozen layer: a process killed as the command starts leaves
// the undo point.
func TestCheckpointRecordedBeforeCommand(t *testing.T) {
	dir, rec := chainableWorkspace(t)
	g := &fakeGuest{t: t, l: layersOf(dir, rec), top: "workspace.ext4", ep: 100}
	g.fakeQEMU(t)
	cps := checkpointsOf(dir)
	g.onRun = func() {
		list, err := cps.List()
		if err != nil || len(list) != g.runs {
			t.Errorf("command %d starts with %d checkpoints recorded (%v)", g.runs, len(list), err)
			return
		}
		if _, ok, err := cps.LayerOf(list[len(list)-1].Number, g.l); !ok || err != nil {
			t.Errorf("command %d: its checkpoint names no frozen layer: %v", g.runs, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &Client{}
	for _, cmd := range [][]string{{"write", "a"}, {"write", "b"}, {"true"}, {"write", "c"}} {
		if _, err := c.execCheckpointed(ctx, dir, rec, g.agent(t), ExecOptions{Command: cmd}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFreezeAheadInTidy: the housekeeping after a writing quiet exec
// freezes the live top itself, so the next exec's checkpoint makes no
// QEMU call before its command starts and names the layer frozen ahead
// (with the bytes the write left in it); after an exec that wrote nothing
// nothing is frozen (and nothing flushed). Undo points stay the states
// before each command, and a guest that moved on since its report still
// gets its checkpoint the usual way.
func TestFreezeAheadInTidy(t *testing.T) {
	dir, rec := chainableWorkspace(t)
	g := &fakeGuest{t: t, l: layersOf(dir, rec), top: "workspace.ext4", ep: 100}
	g.fakeQEMU(t)
	// The supervisor's tidy, run before it answers (the real one answers
	// first: the test needs it over before the next exec).
	serveSupervisor(t, dir, func(w http.ResponseWriter, r *http.Request) {
		var req supervisor.TidyRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		tidyLayers(r.Context(), dir, rec, req, g.agent(t), nil)
		w.WriteHeader(http.StatusAccepted)
	})
	qemuCalls := func() int {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.pushes + g.switches + g.flushes
	}
	var atStart int
	g.onRun = func() { atStart = g.pushes + g.switches + g.flushes } // g.mu held
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &Client{}
	cps := checkpointsOf(dir)
	exec := func(cmd ...string) (onPath int, cp workspace.Checkpoint, ref workspace.LayerRef) {
		t.Helper()
		before := qemuCalls()
		if _, err := c.execCheckpointed(ctx, dir, rec, g.agent(t), ExecOptions{Command: cmd}); err != nil {
			t.Fatalf("exec %v: %v", cmd, err)
		}
		n := cps.Last()
		cp, err := cps.Get(n)
		if err != nil {
			t.Fatal(err)
		}
		ref, ok, err := cps.LayerOf(n, g.l)
		if err != nil || !ok {
			t.Fatalf("checkpoint %d: %v %v", n, ok, err)
		}
		return atStart - before, cp, ref
	}
	exec("write", "a") // the first checkpoint asks the guest
	onPath, cpB, refB := exec("write", "b")
	if onPath != 0 {
		t.Fatalf("the checkpoint after a writing exec made %d QEMU calls before the command", onPath)
	}
	if cpB.Bytes < 64<<10 {
		t.Fatalf("the checkpoint after a 64 KiB write counts %d bytes", cpB.Bytes)
	}
	onPath, cpC, refC := exec("true")
	if onPath != 0 || refC.Layer == refB.Layer || cpC.Bytes < 64<<10 {
		t.Fatalf("after the write of b: %d QEMU calls on the path, layer %s (before %s), %d bytes", onPath, refC.Layer, refB.Layer, cpC.Bytes)
	}
	// Nothing written: nothing frozen, the same layer named, no bytes.
	_, cpD, refD := exec("write", "d")
	if refD != refC || cpD.Bytes != 0 {
		t.Fatalf("after an exec that wrote nothing: layer %s (before %s), %d bytes", refD.Layer, refC.Layer, cpD.Bytes)
	}
	// Moved on behind the host's back: refused, taken the usual way.
	g.bump()
	g.mu.Lock()
	freezes := g.freezes
	g.mu.Unlock()
	exec("write", "e")
	g.mu.Lock()
	refused, freezes2 := g.refused, g.freezes
	g.mu.Unlock()
	if refused != 1 || freezes2 != freezes+1 {
		t.Fatalf("guest moved on: %d refused, %d freezes", refused, freezes2-freezes)
	}
	// Every top was frozen ahead or left empty by a quiet exec: nothing
	// for an HMP flush to write.
	g.mu.Lock()
	flushes := g.flushes
	g.mu.Unlock()
	if flushes != 0 {
		t.Fatalf("%d flushes of a top frozen ahead or left empty", flushes)
	}
	list, err := cps.List()
	if err != nil || len(list) != 5 {
		t.Fatalf("checkpoints %+v %v", list, err)
	}
	for i, want := range []int{0, 1, 2, 2, 3} {
		m, err := cps.Manifest(list[i].Number)
		if err != nil || len(m.Entries) != want {
			t.Errorf("checkpoint %d lists %d entries, want %d (%v)", list[i].Number, len(m.Entries), want, err)
		}
	}
}
