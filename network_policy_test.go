package pyro

import (
	"context"
	"errors"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
)

func TestResolvePolicy(t *testing.T) {
	ok := []struct {
		network bool
		mode    string
		hosts   []string
		want    string
	}{
		{false, "", nil, "off"},
		{true, "", nil, "egress"},
		{true, "egress", nil, "egress"},
		{false, "EGRESS", nil, "egress"},
	}
	for _, c := range ok {
		p, err := resolvePolicy(c.network, c.mode, c.hosts)
		if err != nil || p.String() != c.want {
			t.Errorf("resolvePolicy(%v, %q, %q) = %v, %v; want %s", c.network, c.mode, c.hosts, p, err, c.want)
		}
	}
	bad := []struct {
		network bool
		mode    string
		hosts   []string
		cat     error
	}{
		{true, "off", nil, errdefs.ErrInvalidArgument},
		{true, "wide-open", nil, errdefs.ErrInvalidArgument},
		{false, "", []string{"pypi.org"}, errdefs.ErrInvalidArgument}, // an allowlist needs a networked policy
		{false, "egress", []string{"pypi.org:99999"}, errdefs.ErrInvalidArgument},
	}
	for _, c := range bad {
		_, err := resolvePolicy(c.network, c.mode, c.hosts)
		if !errors.Is(err, c.cat) || errdefs.Hint(err) == "" {
			t.Errorf("resolvePolicy(%v, %q, %q) = %v, want %v with a hint", c.network, c.mode, c.hosts, err, c.cat)
		}
	}
}

// Bad policies are refused at the SDK boundary: nothing is recorded.
func TestCreateRefusesBadPolicy(t *testing.T) {
	c, err := New(Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.CreateVM(ctx, CreateVMOptions{Network: true, NetworkPolicy: "off"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("CreateVM conflicting policy: %v", err)
	}
	if _, err := c.CreateVM(ctx, CreateVMOptions{NetworkPolicy: "egress", AllowHosts: []string{"*.com"}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("CreateVM bad entry: %v", err)
	}
	if _, err := c.CreateWorkspace(ctx, CreateWorkspaceOptions{NetworkPolicy: "egress", AllowHosts: []string{"a b"}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("CreateWorkspace bad entry: %v", err)
	}
	if _, err := c.RunInVM(ctx, RunOptions{NetworkPolicy: "everything", ExecOptions: ExecOptions{Command: []string{"true"}}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("RunInVM bad policy: %v", err)
	}
	vms, _ := c.ListVMs(ctx)
	wss, _ := c.ListWorkspaces(ctx, nil)
	if len(vms)+len(wss) != 0 {
		t.Fatalf("left behind %d vms, %d workspaces", len(vms), len(wss))
	}
}

func TestSetWorkspaceNetworkStopped(t *testing.T) {
	if !haveNetworkStack {
		haveNetworkStack = true
		t.Cleanup(func() { haveNetworkStack = false })
	}
	c, err := New(Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rec, err := newRecord(instance.KindWorkspace, CreateVMOptions{Environment: DefaultEnvironment, VCPUCount: 1, MemMiB: 256, NetworkPolicy: "egress"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.lc.Create(ctx, rec, nil); err != nil {
		t.Fatal(err)
	}
	ws, err := c.SetWorkspaceNetwork(ctx, rec.ID, SetWorkspaceNetworkOptions{AllowHosts: []string{"PyPI.org", "10.0.0.0/8"}})
	if err != nil {
		t.Fatal(err)
	}
	if ws.NetworkPolicy != "egress" || len(ws.AllowHosts) != 2 || ws.AllowHosts[0] != "pypi.org" || !ws.Network {
		t.Fatalf("after set: %+v", ws)
	}
	// Off needs another NIC: refused, the record keeps the old policy.
	if _, err := c.SetWorkspaceNetwork(ctx, rec.ID, SetWorkspaceNetworkOptions{NetworkPolicy: "off"}); !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("switch to off: %v", err)
	}
	if _, err := c.SetWorkspaceNetwork(ctx, rec.ID, SetWorkspaceNetworkOptions{AllowHosts: []string{"pypi.org:0"}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad entry: %v", err)
	}
	ws, _ = c.StatusWorkspace(ctx, rec.ID)
	if ws.NetworkPolicy != "egress" || len(ws.AllowHosts) != 2 {
		t.Fatalf("a refused change changed the record: %+v", ws)
	}
	if _, err := c.SetWorkspaceNetwork(ctx, "nope", SetWorkspaceNetworkOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown workspace: %v", err)
	}
}
