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
			if req := <-asked; req.MaxCount != 7 {
				t.Fatalf("tidy request %+v: not the caller's caps", req)
			}
			// Nothing made ahead: each checkpoint put a new overlay
			// over the top itself.
			if switches != 0 || pushes == 0 {
				t.Fatalf("%d switches to a staged overlay, %d pushes", switches, pushes)
			}
			continue
		}
		if !staged || flushes != 3 || switches == 0 {
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
