package agent

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// firstPair is an agent whose identity is applied by a fake (recording
// what it got) and a client dialling it over net.Pipe, counting dials.
func firstPair(t *testing.T) (*agentapi.Client, *atomic.Int32, *[]agentapi.IdentityRequest) {
	t.Helper()
	dial, dials, applied := firstDial(t)
	c := agentapi.NewClient(dial)
	t.Cleanup(func() { c.Close() })
	return c, dials, applied
}

// firstDial is firstPair's agent and its dialler: each client made with
// it is another host of the same agent (a fork's, after the source's).
func firstDial(t *testing.T) (func(context.Context) (net.Conn, error), *atomic.Int32, *[]agentapi.IdentityRequest) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	a := New(Options{Version: "first-test"})
	var mu sync.Mutex
	var applied []agentapi.IdentityRequest
	a.applyFake = func(req agentapi.IdentityRequest, st *steps) (agentapi.IdentityResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		applied = append(applied, req)
		st.mark("rng")
		return agentapi.IdentityResponse{Hostname: req.Hostname, MachineID: req.MachineID, Health: a.health()}, nil
	}
	var dials atomic.Int32
	dial := func(context.Context) (net.Conn, error) {
		dials.Add(1)
		host, guest := net.Pipe()
		wg.Go(func() { _ = a.Serve(ctx, guest) })
		return host, nil
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return dial, &dials, &applied
}

func firstIdentity() agentapi.IdentityRequest {
	return agentapi.IdentityRequest{Entropy: []byte(strings.Repeat("e", 64)), UnixNano: 1, Hostname: "pyro-1234abcd",
		MachineID: strings.Repeat("ab", 16), Timings: true}
}

// A restored guest's first call is one binary frame with its identity and
// its first command; the command's result follows on the same channel, and
// that channel then carries the usual session (one dial in all).
func TestFirstCallIdentityAndCommand(t *testing.T) {
	c, dials, applied := firstPair(t)
	exec := &agentapi.ExecRequest{Shell: "echo out; echo err >&2; exit 3", Cwd: t.TempDir(), Env: map[string]string{"X": "y"}, Timings: true}
	resp, err := c.First(testCtx(t), testTimeout, firstIdentity(), exec)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Hostname != "pyro-1234abcd" || resp.Health.AgentVersion != "first-test" || !strings.Contains(resp.Timings, "rng=") {
		t.Fatalf("identity answer %+v", resp)
	}
	if len(*applied) != 1 || string((*applied)[0].Entropy) != strings.Repeat("e", 64) || (*applied)[0].MachineID != strings.Repeat("ab", 16) {
		t.Fatalf("applied %+v", *applied)
	}
	var live strings.Builder
	res, ok, err := c.FirstExec(testCtx(t), func(_ string, p []byte) { live.Write(p) })
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if res.ExitCode != 3 || res.Stdout != "out\n" || res.Stderr != "err\n" || !strings.Contains(res.Timings, "start=") || live.Len() != 8 {
		t.Fatalf("first command %+v (live %q)", res, live.String())
	}
	if _, ok, _ := c.FirstExec(testCtx(t), nil); ok {
		t.Fatal("a second FirstExec found a command")
	}
	// The same channel goes on as the usual session.
	r2, err := c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"sh", "-c", "echo $X"}, Env: map[string]string{"X": "z"}}, nil)
	if err != nil || r2.Stdout != "z\n" {
		t.Fatal(r2, err)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials, want 1", n)
	}
}

// Without a command the session starts right after the identity's answer.
func TestFirstCallIdentityOnly(t *testing.T) {
	c, dials, applied := firstPair(t)
	if _, err := c.First(testCtx(t), testTimeout, firstIdentity(), nil); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := c.FirstExec(testCtx(t), nil); ok || err != nil {
		t.Fatal(ok, err)
	}
	if _, err := c.Health(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if len(*applied) != 1 || dials.Load() != 1 {
		t.Fatalf("applied %d, dials %d", len(*applied), dials.Load())
	}
}

// An identity the agent refuses comes back as its error, categorized, and
// the command it carried never runs.
func TestFirstCallRefusedIdentityRunsNothing(t *testing.T) {
	c, _, applied := firstPair(t)
	id := firstIdentity()
	id.Hostname = "Not_A_Label"
	dir := t.TempDir()
	_, err := c.First(testCtx(t), testTimeout, id, &agentapi.ExecRequest{Shell: "touch ran", Cwd: dir})
	if errdefs.Category(err) != errdefs.ErrInvalidArgument || !strings.Contains(err.Error(), "hostname") {
		t.Fatalf("err %v", err)
	}
	if len(*applied) != 0 {
		t.Fatal("identity applied")
	}
	if _, ok, _ := c.FirstExec(testCtx(t), nil); ok {
		t.Fatal("a command is pending")
	}
	// The next call dials afresh and the agent answers it.
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Shell: "test -e ran || echo none", Cwd: dir}, nil)
	if err != nil || res.Stdout != "none\n" {
		t.Fatal(res, err)
	}
}

// A command the agent refuses (a cwd that does not exist) is an error
// event, reported as Exec reports it.
func TestFirstCallRefusedCommand(t *testing.T) {
	c, _, _ := firstPair(t)
	if _, err := c.First(testCtx(t), testTimeout, firstIdentity(), &agentapi.ExecRequest{Shell: "true", Cwd: "/nonexistent-dir"}); err != nil {
		t.Fatal(err)
	}
	_, ok, err := c.FirstExec(testCtx(t), nil)
	if !ok || errdefs.Category(err) != errdefs.ErrInvalidArgument {
		t.Fatal(ok, err)
	}
}

// A command that cannot travel in the frame (it names secrets) is left
// for Exec: the identity goes alone.
func TestFirstCallLeavesSecretCommands(t *testing.T) {
	c, _, applied := firstPair(t)
	if _, err := c.First(testCtx(t), testTimeout, firstIdentity(), &agentapi.ExecRequest{Shell: "true", SecretEnv: map[string]string{"A": ""}}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := c.FirstExec(testCtx(t), nil); ok || len(*applied) != 1 {
		t.Fatal("the command was sent", ok)
	}
}

const testTimeout = 30 * time.Second

// A fork's identity goes in the first-call frame with its question: the
// answer names the same services, shells and jobs the list endpoints
// report, the health says the agent answers it, and the channel then
// carries the usual session (one dial).
func TestFirstCallInherited(t *testing.T) {
	dial, dials, applied := firstDial(t)
	c := agentapi.NewClient(dial)
	defer c.Close()
	sh := startInheritables(t, c)
	svcs, shells, jobs := listInheritables(t, c)
	// A fork's host: a new client whose first call asks.
	fork := agentapi.NewClient(dial)
	defer fork.Close()
	before := dials.Load()
	req := firstIdentity()
	req.Inherited = true
	resp, err := fork.First(testCtx(t), testTimeout, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(*applied) != 1 || !(*applied)[0].Inherited || !resp.Health.FirstInherited || resp.Inherited == nil {
		t.Fatalf("applied %+v, answer %+v", *applied, resp)
	}
	in := resp.Inherited
	if len(in.Services) != 1 || in.Services[0].Name != "web" || in.Services[0].PID != svcs[0].PID ||
		len(in.Shells) != 1 || in.Shells[0].ShellID != sh.ShellID || len(in.Jobs) != len(jobs) || len(jobs) != 1 || in.Jobs[0].JobID != jobs[0].JobID {
		t.Fatalf("inherited %+v\nlists %+v %+v %+v", in, svcs, shells, jobs)
	}
	if !in.Services[0].StartedAt.Equal(svcs[0].StartedAt) || in.Shells[0].PID != shells[0].PID {
		t.Fatalf("inherited %+v\nlists %+v %+v", in, svcs, shells)
	}
	if _, err := fork.Health(testCtx(t)); err != nil || dials.Load() != before+1 {
		t.Fatalf("session after the frame: %v, %d dials", err, dials.Load()-before)
	}
}
