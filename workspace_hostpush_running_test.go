package pyro

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// A release whose answer the host does not get (the call timed out while
// the guest synced a lot of dirty data, the connection broke) may still
// have happened in the guest: the host asks for the remount all the same,
// else /workspace stayed a read-only placeholder until the guest's own
// deadline and the push through the guest that follows failed on it.
func TestHostPushRunningRemountsAfterLostRelease(t *testing.T) {
	dir := vmdir.Dir(t.TempDir())
	rec := instance.Record{ID: "ws", WorkspaceBase: dir.Path("base.ext4"), WorkspaceDisk: dir.Path("workspace.ext4")}
	if err := os.WriteFile(rec.WorkspaceDisk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var calls []string
	serveSupervisor(t, dir, func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, supervisor.AgentPrefix)
		mu.Lock()
		calls = append(calls, p)
		mu.Unlock()
		switch p {
		case agentapi.PathLayerRelease:
			// Released in the guest, but the answer is an error.
			agentapi.WriteError(w, errdefs.New(errdefs.ErrUnavailable, "", "the answer was lost"))
		default:
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte("{}"))
		}
	})
	c := newTestClient(t)
	_, err := c.pushReleased(context.Background(), dir, rec, t.TempDir(), "/workspace", nil, nil)
	if err == nil || errors.As(err, new(errPushKept)) {
		t.Fatalf("push after a lost release answer: %v, want a push through the guest", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 || calls[0] != agentapi.PathLayerRelease || calls[1] != agentapi.PathLayerRemount {
		t.Fatalf("agent calls %v, want the release and then a remount", calls)
	}
}

// QEMU's switch must be over before the guest's release ends: past it the
// guest remounts the old layer by itself, and a switch after that changes
// the disk under its mounted /workspace (what it wrote meanwhile lost, its
// file system torn). The host wrote within 3/4 of the release; the switch
// had 30 s more whatever was left of it.
func TestHostPushRunningSwitchWithinRelease(t *testing.T) {
	dir, rec := stoppedWorkspace(t, 64<<20, true)
	t.Setenv("PYRO_PUSH_RELEASE_MS", "8000")
	var mu sync.Mutex
	var released time.Time
	serveSupervisor(t, dir, func(w http.ResponseWriter, r *http.Request) {
		if strings.TrimPrefix(r.URL.Path, supervisor.AgentPrefix) == agentapi.PathLayerRelease {
			mu.Lock()
			released = time.Now() // the guest's deadline runs from here
			mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}"))
	})
	var deadline time.Time
	defer func(f func(context.Context, vmdir.Dir, string, []string) error) { qemuPivot = f }(qemuPivot)
	qemuPivot = func(ctx context.Context, _ vmdir.Dir, _ string, _ []string) error {
		deadline, _ = ctx.Deadline()
		return nil
	}
	src := t.TempDir()
	if err := os.WriteFile(src+"/f", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t)
	if _, err := c.pushReleased(context.Background(), dir, rec, src, "/workspace/p", nil, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if end := released.Add(8 * time.Second); deadline.IsZero() || !deadline.Before(end) {
		t.Fatalf("the switch may run until %v, past the guest's release end %v", deadline, end)
	}
}

// serveSupervisor answers the workspace's supervisor socket with h until
// the test ends: the supervisor's own routes and the agent's behind
// supervisor.AgentPrefix, as the tests need them.
func serveSupervisor(t *testing.T, dir vmdir.Dir, h http.HandlerFunc) {
	t.Helper()
	lis, err := net.Listen("unix", dir.Path(vmdir.SupervisorSock))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
}
