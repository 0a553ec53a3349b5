package pyro

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/hostres"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// TestDiffSidesShareCap: a diff's two sides lie on the host's disk at
// once, so together they may take a snapshot's cap, not each of them
// (attacker's review: a guest streaming both sides to the cap took twice
// its bytes of host disk). Each side here is 600 bytes under a 1,000-byte
// cap; nothing is left in the workspace's directory.
func TestDiffSidesShareCap(t *testing.T) {
	t.Setenv(hostres.SnapshotBytesEnv, "1000")
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+agentapi.PathLayerChanges, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(make([]byte, 600))
	})
	dir := t.TempDir()
	_, err := diffLayered(context.Background(), vmdir.Dir(dir), agentServing(mux), workspace.DiffOptions{}, nil)
	if err == nil || !strings.Contains(err.Error(), "exceeds the host's cap of 1000 bytes") {
		t.Fatalf("two 600-byte sides under a 1000-byte cap: %v", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// TestDiffSideFailureStopsTheOther: when one side fails, the other's
// stream is stopped at once and the first failure is the answer; a guest
// trickling the other side (never idle long enough for its bound) held the
// diff until the caller gave up.
func TestDiffSideFailureStopsTheOther(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+agentapi.PathLayerChanges, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("side") == agentapi.SideLower {
			http.Error(w, "the lower side is gone", http.StatusInternalServerError)
			return
		}
		for {
			if _, err := w.Write([]byte{0}); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := diffLayered(ctx, vmdir.Dir(t.TempDir()), agentServing(mux), workspace.DiffOptions{}, nil)
	if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "the lower side is gone") {
		t.Fatalf("diff with a failed side: %v", err)
	}
}
