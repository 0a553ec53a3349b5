package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/fakevmm"
)

func networked(t *testing.T, p netpolicy.Policy) (*Client, chan<- struct{}) {
	t.Helper()
	rec := instance.Record{}
	rec.SetPolicy(p)
	dir := newInstance(t, rec)
	_, done := serve(t, dir, Options{Steps: fakevmm.Steps(fakevmm.New(vmm.Features{NetworkPolicy: true}))})
	waitState(t, dir, instance.Running)
	stop := make(chan struct{})
	go func() {
		<-stop
		_ = NewClient(dir).Stop(context.Background())
		<-done
	}()
	return NewClient(dir), stop
}

func TestNetworkEndpoints(t *testing.T) {
	ctx := context.Background()
	c, stop := networked(t, netpolicy.Policy{Mode: netpolicy.EgressPublished, AllowHosts: []string{"example.com"}})
	st, err := c.NetworkState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.GuestIP != "10.0.2.15" || st.Gateway != "10.0.2.2" || st.DNS != "10.0.2.3" || st.Prefix != 24 ||
		st.Policy.Mode != netpolicy.EgressPublished || len(st.Policy.AllowHosts) != 1 {
		t.Fatalf("state %+v", st)
	}
	if ds, err := c.NetworkDenials(ctx); err != nil || len(ds) != 0 {
		t.Fatalf("denials %v, %v", ds, err)
	}
	// A live change, then a bad one that changes nothing.
	if err := c.SetNetworkPolicy(ctx, netpolicy.Policy{Mode: netpolicy.EgressPublished, AllowHosts: []string{"pypi.org"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetNetworkPolicy(ctx, netpolicy.Policy{Mode: netpolicy.Egress, AllowHosts: []string{"bad entry!"}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad policy: %v", err)
	}
	if err := c.SetNetworkPolicy(ctx, netpolicy.Policy{Mode: netpolicy.Off}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("off live: %v", err)
	}
	if st, _ := c.NetworkState(ctx); len(st.Policy.AllowHosts) != 1 || st.Policy.AllowHosts[0] != "pypi.org" {
		t.Fatalf("after update: %+v", st.Policy)
	}

	pp, err := c.Publish(ctx, 0, 8080)
	if err != nil {
		t.Fatal(err)
	}
	if pp.HostAddress != "127.0.0.1" || pp.HostPort == 0 || pp.GuestPort != 8080 {
		t.Fatalf("published %+v", pp)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", pp.HostPort)
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err != nil {
		t.Fatalf("published port does not accept: %v", err)
	} else {
		conn.Close()
	}
	if _, err := c.Publish(ctx, pp.HostPort, 9090); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("bound host port: %v", err)
	}
	if _, err := c.Publish(ctx, 0, 70000); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("guest port 70000: %v", err)
	}
	if _, err := c.Publish(ctx, 443, 9090); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("privileged host port 443: %v", err)
	}
	if err := c.Unpublish(ctx, 8080); err != nil {
		t.Fatal(err)
	}
	if err := c.Unpublish(ctx, 8080); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second unpublish: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("unpublished port still accepts")
	}
	// Published ports close with the supervisor.
	pp, err = c.Publish(ctx, 0, 8081)
	if err != nil {
		t.Fatal(err)
	}
	close(stop)
	addr = fmt.Sprintf("127.0.0.1:%d", pp.HostPort)
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("published port outlived the supervisor")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNetworkEndpointsRefuse(t *testing.T) {
	ctx := context.Background()
	c, stop := networked(t, netpolicy.Policy{Mode: netpolicy.Egress})
	defer close(stop)
	if _, err := c.Publish(ctx, 0, 8080); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("publish under egress: %v", err)
	}
	dir := newInstance(t, instance.Record{})
	serve(t, dir, Options{})
	waitState(t, dir, instance.Running)
	if _, err := NewClient(dir).NetworkDenials(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("denials without a network: %v", err)
	}
}
