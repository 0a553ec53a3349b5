package pyro

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/supervisor"
)

// TestQuietReportAfterAnswer: a checkpointed exec answers before anyone
// asks the guest for its quiet report; the supervisor's tidy asks for it
// (TidyRequest.Quiet) and keeps it, and the next exec's checkpoint then
// comes from the disk alone. The windows the answer opens: a tidy that
// never ran (supervisor killed after the answer) leaves the report of
// the exec before, which the guest refuses, so that checkpoint is taken
// the usual way and every undo point stays the state before its command;
// an exec that comes while the tidy asks the guest waits for it (the
// layer lock) and is quiet.
func TestQuietReportAfterAnswer(t *testing.T) {
	dir, rec := chainableWorkspace(t)
	g := &fakeGuest{t: t, l: layersOf(dir, rec), top: "workspace.ext4", ep: 100}
	g.fakeQEMU(t)
	asked := make(chan supervisor.TidyRequest, 10)
	serveSupervisor(t, dir, func(w http.ResponseWriter, r *http.Request) {
		var req supervisor.TidyRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		asked <- req
		w.WriteHeader(http.StatusAccepted) // the tidy runs later (tidy below)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &Client{}
	cps := checkpointsOf(dir)
	count := func() (freezes, refused, reports int) {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.freezes, g.refused, g.reports
	}
	exec := func(cmd ...string) {
		t.Helper()
		_, _, before := count()
		if _, err := c.execCheckpointed(ctx, dir, rec, g.agent(t), ExecOptions{Command: cmd}); err != nil {
			t.Fatalf("exec %v: %v", cmd, err)
		}
		if _, _, after := count(); after != before {
			t.Fatalf("exec %v asked the guest for %d quiet reports before it answered", cmd, after-before)
		}
	}
	tidy := func() {
		t.Helper()
		select {
		case req := <-asked:
			if !req.Quiet {
				t.Fatalf("tidy after an exec without the quiet report: %+v", req)
			}
			tidyLayers(ctx, dir, rec, req, g.agent(t), nil)
		default:
			t.Fatal("no tidy asked for after the exec")
		}
	}
	exec("write", "a") // no report yet: the usual checkpoint
	tidy()
	f0, _, _ := count()
	exec("write", "b")
	if f, r, _ := count(); f != f0 || r != 0 {
		t.Fatalf("exec after a kept report: %d freezes, %d refused", f-f0, r)
	}
	// The supervisor dies before its tidy: the report kept is the one
	// before "write b", which the guest refuses.
	<-asked
	exec("write", "c")
	if f, r, _ := count(); f != f0+1 || r != 1 {
		t.Fatalf("exec after a lost tidy: %d freezes, %d refused (want 1, 1)", f-f0, r)
	}
	tidy()
	exec("write", "d")
	// An exec while the tidy asks the guest waits for the report.
	inReport, release := make(chan struct{}), make(chan struct{})
	g.onReport = func() { close(inReport); <-release }
	req := <-asked
	done := make(chan struct{})
	go func() { defer close(done); tidyLayers(ctx, dir, rec, req, g.agent(t), nil) }()
	<-inReport
	g.onReport = nil
	execd := make(chan struct{})
	go func() {
		defer close(execd)
		if _, err := c.execCheckpointed(ctx, dir, rec, g.agent(t), ExecOptions{Command: []string{"true"}}); err != nil {
			t.Errorf("exec while the tidy runs: %v", err)
		}
	}()
	select {
	case <-execd:
		t.Fatal("the exec did not wait for the tidy asking for the report")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-done
	<-execd
	if f, r, _ := count(); f != f0+1 || r != 1 {
		t.Fatalf("exec after a tidy under way: %d freezes, %d refused (want 1, 1)", f-f0, r)
	}
	list, err := cps.List()
	if err != nil || len(list) != 5 {
		t.Fatalf("checkpoints %+v %v", list, err)
	}
	for i, want := range []int{0, 1, 2, 3, 4} {
		m, err := cps.Manifest(list[i].Number)
		if err != nil || len(m.Entries) != want {
			t.Errorf("checkpoint %d lists %d entries, want %d (%v)", list[i].Number, len(m.Entries), want, err)
		}
	}
}
