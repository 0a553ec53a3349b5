package agent

import (
	"context"
	"encoding/json"
	"net"
	"reflect"
	"sync"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// What a fork inherited comes with its identity answer: the same
// services, shells and jobs its list endpoints report, so the fork's host
// needs no call per list (each is more guest code a restored TCG guest
// translates afresh).
func TestIdentityReportsInherited(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	a := New(Options{})
	c := agentapi.NewClient(func(context.Context) (net.Conn, error) {
		host, guest := net.Pipe()
		wg.Go(func() { _ = a.Serve(ctx, guest) })
		return host, nil
	})
	t.Cleanup(func() {
		c.Close()
		cancel()
		wg.Wait()
	})
	sh := startInheritables(t, c)
	// As the wire carries it (IdentityResponse.Inherited).
	b, err := json.Marshal(agentapi.IdentityResponse{Inherited: a.inherited()})
	if err != nil {
		t.Fatal(err)
	}
	var resp agentapi.IdentityResponse
	if err := json.Unmarshal(b, &resp); err != nil || resp.Inherited == nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	svcs, shells, jobs := listInheritables(t, c)
	in := resp.Inherited
	if len(in.Services) != 1 || in.Services[0].Name != "web" || len(in.Shells) != 1 || in.Shells[0].ShellID != sh.ShellID || len(in.Jobs) != 1 {
		t.Fatalf("inherited %+v", in)
	}
	if in.Services[0].Name != svcs[0].Name || in.Services[0].PID != svcs[0].PID || !reflect.DeepEqual(in.Shells, shells) || in.Jobs[0].JobID != jobs[0].JobID {
		t.Fatalf("inherited %+v, lists %+v %+v %+v", in, svcs, shells, jobs)
	}
}

// startInheritables starts what a fork inherits in the guest c serves: a
// service "web", a shell (returned) and a job, each ended with the test.
func startInheritables(t *testing.T, c *agentapi.Client) agentapi.ShellInfo {
	t.Helper()
	dir := t.TempDir()
	if _, err := c.StartService(testCtx(t), agentapi.ServiceStartRequest{Name: "web", Argv: []string{"sleep", "30"}, Cwd: dir}); err != nil {
		t.Fatal(err)
	}
	stopAfter(t, c, "web")
	sh, err := c.OpenShell(testCtx(t), agentapi.ShellOpenRequest{Cwd: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CloseShell(context.Background(), sh.ShellID) })
	if _, err := c.StartJob(testCtx(t), agentapi.ExecRequest{Argv: []string{"true"}, Cwd: dir}); err != nil {
		t.Fatal(err)
	}
	return sh
}

// listInheritables is what c's list endpoints report.
func listInheritables(t *testing.T, c *agentapi.Client) ([]agentapi.ServiceStatus, []agentapi.ShellInfo, []agentapi.JobInfo) {
	t.Helper()
	svcs, err1 := c.ListServices(testCtx(t))
	shells, err2 := c.ListShells(testCtx(t))
	jobs, err3 := c.ListJobs(testCtx(t))
	if err1 != nil || err2 != nil || err3 != nil {
		t.Fatal(err1, err2, err3)
	}
	return svcs, shells, jobs
}
