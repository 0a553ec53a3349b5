package pyro

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// checkpointedStopped is stoppedWorkspace that takes checkpoints, with a
// fake agent on its supervisor socket: the release answers listing (nil:
// no listing, as an older agent), every other call {}. It returns the
// paths the agent was asked for.
func checkpointedStopped(t *testing.T, listing *agentapi.LayerManifest) (vmdir.Dir, instance.Record, func() []string) {
	t.Helper()
	dir, rec := stoppedWorkspace(t, 64<<20, true)
	rec.Extra = json.RawMessage(`{"checkpoints":true}`)
	var mu sync.Mutex
	var calls []string
	serveSupervisor(t, dir, func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, supervisor.AgentPrefix)
		mu.Lock()
		calls = append(calls, p)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if p == agentapi.PathLayerRelease && listing != nil && r.URL.Query().Get("manifest") == "1" {
			_ = json.NewEncoder(w).Encode(listing)
			return
		}
		w.Write([]byte("{}"))
	})
	// No QEMU: the switches succeed as asked.
	pushSeam, pivotSeam := qemuPush, qemuPivot
	t.Cleanup(func() { qemuPush, qemuPivot = pushSeam, pivotSeam })
	qemuPush = func(context.Context, vmdir.Dir, string) error { return nil }
	qemuPivot = func(context.Context, vmdir.Dir, string, []string) error { return nil }
	return dir, rec, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string{}, calls...)
	}
}

// A host push into a workspace that takes checkpoints records the push's
// checkpoint: the layer the guest released (frozen under an overlay, so it
// stays as recorded), the release's listing, the push's label; the pushed
// tree is the new top, a chain of its own.
func TestHostPushCheckpointRecorded(t *testing.T) {
	listing := agentapi.LayerManifest{Entries: []agentapi.LayerEntry{{Path: "old.txt", Kind: "file", Size: 3, Mode: 0o100644, Ino: 12}}}
	dir, rec, calls := checkpointedStopped(t, &listing)
	src := t.TempDir()
	if err := os.WriteFile(src+"/f", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := layersOf(dir, rec)
	before, err := l.Top()
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t)
	ck := newPushCheckpoint(dir, rec, src, "/workspace/p")
	if _, err := c.pushReleased(context.Background(), dir, rec, src, "/workspace/p", ck, nil); err != nil {
		t.Fatal(err)
	}
	if got := calls(); len(got) != 2 || got[0] != agentapi.PathLayerRelease || got[1] != agentapi.PathLayerRemount {
		t.Fatalf("agent calls %v, want the release and the remount", got)
	}
	cps := checkpointsOf(dir)
	list, err := cps.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("checkpoints after the push: %+v, %v", list, err)
	}
	if want := "sync push " + src + " /workspace/p"; list[0].Command != want {
		t.Fatalf("checkpoint command %q, want %q", list[0].Command, want)
	}
	ref, isLayer, err := cps.LayerOf(list[0].Number, l)
	if err != nil || !isLayer || ref.Layer != before {
		t.Fatalf("the checkpoint names %+v (layer %v, %v), want the released top %s", ref, isLayer, err, before)
	}
	if err := l.Verify(ref); err != nil {
		t.Fatalf("the checkpoint's layer changed since it was recorded: %v", err)
	}
	m, err := cps.Manifest(list[0].Number)
	if err != nil || len(m.Entries) != 1 || m.Entries[0] != listing.Entries[0] {
		t.Fatalf("the checkpoint's listing %+v (%v), want the release's", m, err)
	}
	top, err := l.Top()
	if err != nil {
		t.Fatal(err)
	}
	if chain, err := l.Chain(top); err != nil || len(chain) != 1 || !strings.HasSuffix(top, ".raw") {
		t.Fatalf("the pushed top %s: chain %v (%v), want a raw root", top, chain, err)
	}
	// The layers below the checkpoint are kept for it.
	if err := l.GC(workspace.KeepLayers(string(dir))); err != nil {
		t.Fatal(err)
	}
	if err := l.Verify(ref); err != nil {
		t.Fatalf("the checkpoint's layer after a collection: %v", err)
	}
}

// An agent that releases /workspace but sends no listing (older than the
// listed release) leaves the push to the guest's path: nothing recorded,
// /workspace mounted again, the top unchanged.
func TestHostPushCheckpointNeedsListing(t *testing.T) {
	dir, rec, calls := checkpointedStopped(t, nil)
	src := t.TempDir()
	if err := os.WriteFile(src+"/f", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := layersOf(dir, rec)
	before, _ := l.Top()
	c := newTestClient(t)
	_, err := c.pushReleased(context.Background(), dir, rec, src, "/workspace/p", newPushCheckpoint(dir, rec, src, "/workspace/p"), nil)
	if !errors.Is(err, errNoReleaseListing) {
		t.Fatalf("push with an agent that sends no listing: %v", err)
	}
	if got := calls(); len(got) != 2 || got[1] != agentapi.PathLayerRemount {
		t.Fatalf("agent calls %v, want the release and a remount", got)
	}
	if n := checkpointsOf(dir).Last(); n != 0 {
		t.Fatalf("checkpoint %d recorded for a push the host did not serve", n)
	}
	if top, _ := l.Top(); top != before {
		t.Fatalf("top %s, want %s", top, before)
	}
}

// A checkpoint that finds /workspace released with no push under way (the
// pushing process died; the guest would remount by itself only when the
// release's bound passed) has the guest mount it again and takes the
// checkpoint, instead of failing every checkpointed command meanwhile.
func TestCheckpointRemountsReleased(t *testing.T) {
	dir, rec := stoppedWorkspace(t, 64<<20, true)
	rec.Extra = json.RawMessage(`{"checkpoints":true}`)
	var mu sync.Mutex
	released := true
	var calls []string
	serveSupervisor(t, dir, func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, supervisor.AgentPrefix)
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, p)
		switch {
		case p == agentapi.PathLayerFreeze && released:
			agentapi.WriteError(w, errdefs.New(errdefs.ErrFailedPrecondition, "", "/workspace is released to the host"))
			return
		case p == agentapi.PathLayerRemount:
			released = false
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"entries":[]}`))
	})
	// A running QEMU: the workspace's layers are chained (QEMU's side is
	// the seam below).
	runningQEMU(t, dir)
	pushSeam := qemuPush
	t.Cleanup(func() { qemuPush = pushSeam })
	qemuPush = func(context.Context, vmdir.Dir, string) error { return nil }
	c := newTestClient(t)
	agent := c.lc.Client(dir)
	defer agent.Close()
	if err := c.takeCheckpoint(context.Background(), dir, rec, agent, "exec: true"); err != nil {
		t.Fatalf("checkpoint with /workspace left released: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if released || checkpointsOf(dir).Last() != 1 {
		t.Fatalf("calls %v: released %v, checkpoints %d", calls, released, checkpointsOf(dir).Last())
	}
}

// A push into a stopped checkpointed workspace takes its checkpoint on the
// host, without a guest: the old top (kept, verified) with the listing of
// its image, recorded before the pushed layer became the top; compared
// with the listing after the push, it names exactly what the push added
// (what diff --since reads), and the old layer outlives the push's GC.
func TestHostPushStoppedCheckpoint(t *testing.T) {
	dir, rec := stoppedWorkspace(t, 64<<20, true)
	ctx := context.Background()
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "d", "f"), []byte("pushed"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A first push (no checkpoint) chains the workspace; the guest then
	// writes a file and deletes one of the baseline (a whiteout).
	l, old := pushedThenWritten(t, dir, rec, src, "cd upper\nwrite /etc/hostname later.txt\nmknod gone c 0 0\n")
	before, err := workspace.ListUpper(ctx, l.Path(old), 100)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, e := range before.Entries {
		kinds[e.Path] = e.Kind
	}
	if kinds["later.txt"] != "file" || kinds["gone"] != "whiteout" || kinds["first/d/f"] != "file" {
		t.Fatalf("the old top lists %v", kinds)
	}
	ck := &pushCheckpoint{label: "sync push src /workspace/second"}
	if _, err := pushIntoLayers(ctx, dir, rec, src, workspace.Root+"/second", ck, nil); err != nil {
		t.Fatal(err)
	}
	if ck.from != "host" || ck.number != 1 {
		t.Fatalf("checkpoint %+v, want number 1 listed on the host", ck)
	}
	cps := checkpointsOf(dir)
	ref, isLayer, err := cps.LayerOf(1, l)
	if err != nil || !isLayer || ref.Layer != old {
		t.Fatalf("the push's checkpoint names %+v (layer %v, %v), want the old top %s", ref, isLayer, err, old)
	}
	m, err := cps.Manifest(1)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, before) {
		t.Fatalf("the checkpoint's listing is not the old top's:\n%+v\nwant\n%+v", m, before)
	}
	top, _ := l.Top()
	if top == old {
		t.Fatal("the push did not name a new top")
	}
	after, err := workspace.ListUpper(ctx, l.Path(top), 100)
	if err != nil {
		t.Fatal(err)
	}
	d := workspace.CompareManifests(m, after, workspace.BaseIndex{})
	if got := strings.Join(d.Added, ","); got != "second,second/d,second/d/f" || len(d.Modified)+len(d.Deleted) != 0 {
		t.Fatalf("since the push's checkpoint: %+v", d)
	}
}

// A stopped checkpointed push whose old top the host cannot list (here a
// guest nested directories past workspace.MaxUpperDepth) is left to the
// guest's path even though its listing now runs beside debugfs, after the
// pushed tree is written: nothing recorded, the top unchanged, no new
// layer file left behind.
func TestHostPushStoppedCheckpointUnlistable(t *testing.T) {
	dir, rec := stoppedWorkspace(t, 64<<20, true)
	ctx := context.Background()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("pushed"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, old := pushedThenWritten(t, dir, rec, src, "cd upper\n"+strings.Repeat("mkdir d\ncd d\n", workspace.MaxUpperDepth+1))
	layers, _ := os.ReadDir(l.Path(workspace.LayersDir))
	ck := &pushCheckpoint{label: "sync push src /workspace/second"}
	_, err := pushIntoLayers(ctx, dir, rec, src, workspace.Root+"/second", ck, nil)
	if !notServed(err) || !errors.Is(err, workspace.ErrTooDeepListed) {
		t.Fatalf("push over an upper too deep to list: %v, want it left to the guest", err)
	}
	if n := checkpointsOf(dir).Last(); n != 0 {
		t.Fatalf("checkpoint %d recorded for a push the host did not serve", n)
	}
	if top, _ := l.Top(); top != old {
		t.Fatalf("top %s, want %s", top, old)
	}
	if after, _ := os.ReadDir(l.Path(workspace.LayersDir)); len(after) != len(layers) {
		t.Fatalf("layer files %d after the push, %d before", len(after), len(layers))
	}
}

// pushedThenWritten pushes src into the stopped workspace at
// /workspace/first without a checkpoint (which chains it: the top is a
// raw root), then has debugfs run script on that top as a guest would
// have written it, and returns the layers and that top.
func pushedThenWritten(t *testing.T, dir vmdir.Dir, rec instance.Record, src, script string) (workspace.Layers, string) {
	t.Helper()
	if _, err := pushIntoLayers(context.Background(), dir, rec, src, workspace.Root+"/first", nil, nil); err != nil {
		t.Fatal(err)
	}
	l := layersOf(dir, rec)
	top, err := l.Top()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("debugfs", "-w", "-f", "-", l.Path(top))
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	return l, top
}
