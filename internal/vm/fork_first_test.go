package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/yamux"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// forkGuest is a fork's guest as its host sees it: it answers a
// first-call frame (unless old: an agent from before the frame, whose
// yamux session refuses the frame's first byte and ends) and the JSON
// identity call over yamux and HTTP, counting each.
type forkGuest struct {
	old          bool
	frames, json atomic.Int32
	mu           sync.Mutex
	asked        []agentapi.IdentityRequest
}

var forkGuestInherited = agentapi.Inherited{
	Services: []agentapi.ServiceStatus{{Name: "web", State: agentapi.ServiceRunning, Argv: []string{"sleep", "30"}, PID: 9}},
	Shells:   []agentapi.ShellInfo{{ShellID: "sh1", PID: 10}},
	Jobs:     []agentapi.JobInfo{},
}

func (g *forkGuest) dial(context.Context) (net.Conn, error) {
	host, guest := net.Pipe()
	go g.serve(guest)
	return host, nil
}

func (g *forkGuest) serve(conn net.Conn) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	first, err := r.Peek(1)
	if err != nil {
		return
	}
	if first[0] == agentapi.FirstMagic[0] {
		g.frames.Add(1)
		if g.old {
			return
		}
		if _, err := io.ReadFull(r, make([]byte, len(agentapi.FirstMagic))); err != nil {
			return
		}
		req, err := agentapi.ReadFirstRequest(r)
		if err != nil {
			return
		}
		g.record(req.Identity)
		resp := agentapi.IdentityResponse{Health: agentapi.Health{AgentVersion: "test", FirstInherited: true}}
		if req.Identity.Inherited {
			in := forkGuestInherited
			resp.Inherited = &in
		}
		b, _ := agentapi.EncodeFirstReply(resp, nil)
		if _, err := conn.Write(b); err != nil {
			return
		}
	}
	sess, err := yamux.Server(struct {
		io.Reader
		io.WriteCloser
	}{r, conn}, nil)
	if err != nil {
		return
	}
	_ = http.Serve(sess, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != agentapi.PathIdentity {
			http.NotFound(w, req)
			return
		}
		g.json.Add(1)
		var id agentapi.IdentityRequest
		if err := json.NewDecoder(req.Body).Decode(&id); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		g.record(id)
		resp := agentapi.IdentityResponse{Hostname: id.Hostname, MachineID: id.MachineID, Health: agentapi.Health{AgentVersion: "test"}}
		if id.Inherited {
			in := forkGuestInherited
			resp.Inherited = &in
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	}))
}

func (g *forkGuest) record(req agentapi.IdentityRequest) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.asked = append(g.asked, req)
}

func forkIdentityWith(t *testing.T, g *forkGuest, first bool) *VM {
	t.Helper()
	v := &VM{ID: "fork1", Agent: agentapi.NewClient(g.dial), Machine: stubMachine{done: make(chan struct{})}}
	t.Cleanup(func() { v.Agent.Close() })
	if err := forkIdentity(context.Background(), Deps{Logger: slog.New(slog.DiscardHandler)}, Config{}, v, first); err != nil {
		t.Fatal(err)
	}
	if v.Start != StartFork || v.Inherited == nil || len(v.Inherited.Services) != 1 || v.Inherited.Services[0].Name != "web" ||
		len(v.Inherited.Shells) != 1 || v.Inherited.Shells[0].ShellID != "sh1" {
		t.Fatalf("fork %+v inherited %+v", v, v.Inherited)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, req := range g.asked {
		if !req.Inherited || len(req.Entropy) != agentapi.IdentityEntropyBytes || req.Hostname != Hostname("fork1") || req.MountWorkspace {
			t.Fatalf("identity asked %+v", req)
		}
	}
	return v
}

// A fork whose saved agent answers the first-call frame gets its identity
// and what it runs in that frame: no yamux, HTTP or JSON in the restored
// guest before it is a machine of its own.
func TestForkIdentityInFirstFrame(t *testing.T) {
	g := &forkGuest{}
	v := forkIdentityWith(t, g, true)
	if g.frames.Load() != 1 || g.json.Load() != 0 || !v.Health.FirstInherited {
		t.Fatalf("%d frames, %d JSON calls, health %+v", g.frames.Load(), g.json.Load(), v.Health)
	}
}

// A source whose agent is not known to answer it (an older pyro's) gets
// no frame, and one that refuses the frame anyway gets the JSON call
// after it: the fork still gets its identity and its inherited report.
func TestForkIdentityFallsBackToJSON(t *testing.T) {
	g := &forkGuest{old: true}
	forkIdentityWith(t, g, false)
	if g.frames.Load() != 0 || g.json.Load() != 1 {
		t.Fatalf("not known: %d frames, %d JSON calls", g.frames.Load(), g.json.Load())
	}
	g = &forkGuest{old: true}
	forkIdentityWith(t, g, true)
	if g.frames.Load() != 1 || g.json.Load() != 1 {
		t.Fatalf("refused: %d frames, %d JSON calls", g.frames.Load(), g.json.Load())
	}
}
