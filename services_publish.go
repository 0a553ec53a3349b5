package pyro

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/netstack"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Published ports: a service started with Publish gets guest ports
// forwarded from the host's loopback (127.0.0.1 only) by the supervisor's
// network stack. They need the egress+published-ports policy, close when
// the service stops, and die with the supervisor (stop, reset, delete).
// Which service published which port is kept in publishedFile; the
// supervisor's list is the truth about which ports are open.

// publishedFile maps service names to the ports they published.
const publishedFile = "published-ports.json"

// maxPublish bounds the ports one service may publish.
const maxPublish = 16

// The supervisor's publishing calls (function variables: a seam for tests).
var (
	publishPort = func(ctx context.Context, dir vmdir.Dir, hostPort, guestPort int) (PublishedPort, error) {
		pp, err := supervisor.NewClient(dir).Publish(ctx, hostPort, guestPort)
		return PublishedPort(pp), err
	}
	unpublishPort = func(ctx context.Context, dir vmdir.Dir, guestPort int) error {
		return supervisor.NewClient(dir).Unpublish(ctx, guestPort)
	}
	publishedPorts = func(ctx context.Context, dir vmdir.Dir) ([]PublishedPort, error) {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		st, err := supervisor.NewClient(dir).NetworkState(ctx)
		var out []PublishedPort
		for _, pp := range st.Published {
			out = append(out, PublishedPort(pp))
		}
		return out, err
	}
)

type portSpec struct{ host, guest int }

// parsePublish reads "[HOST_PORT:]GUEST_PORT" entries; a missing host port
// (or 0) lets the host pick a free one.
func parsePublish(specs []string) ([]portSpec, error) {
	if len(specs) > maxPublish {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "", "at most %d published ports per service, got %d", maxPublish, len(specs))
	}
	var out []portSpec
	for _, s := range specs {
		hostStr, guestStr, hasHost := strings.Cut(strings.TrimSpace(s), ":")
		if !hasHost {
			hostStr, guestStr = "0", hostStr
		}
		host, herr := strconv.Atoi(hostStr)
		guest, gerr := strconv.Atoi(guestStr)
		if herr != nil || gerr != nil || host < 0 || host > 65535 || guest < 1 || guest > 65535 {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "use [HOST_PORT:]GUEST_PORT with ports 1-65535, e.g. 8000 or 18000:8000",
				"invalid publish %q", s)
		}
		if err := netstack.CheckHostPort(host); err != nil {
			return nil, fmt.Errorf("publish %q: %w", s, err)
		}
		if slices.ContainsFunc(out, func(p portSpec) bool { return p.guest == guest || (host != 0 && p.host == host) }) {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "publish each port once", "publish %q repeats a port", s)
		}
		out = append(out, portSpec{host, guest})
	}
	return out, nil
}

// publishing is one StartService's ports, published before the service
// starts so that a failure leaves nothing behind.
type publishing struct {
	c     *Client
	dir   vmdir.Dir
	ports []PublishedPort
}

// publishBegin validates and publishes specs for a service of workspace
// id, whose guest must be running; on any failure it undoes what it did.
func (c *Client) publishBegin(ctx context.Context, id string, specs []string) (*publishing, error) {
	if len(specs) == 0 {
		return &publishing{c: c}, nil
	}
	ps, err := parsePublish(specs)
	if err != nil {
		return nil, err
	}
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return nil, err
	}
	if p := rec.Policy(); p.Mode != netpolicy.EgressPublished {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition,
			"create the workspace with --network-policy egress+published-ports (network_policy), or set it with `pyro workspace network set ID --network-policy egress+published-ports`",
			"workspace %s has network policy %q, which publishes no ports", id, p.Normalized().Mode)
	}
	agent, err := c.workspaceAgent(ctx, dir, rec) // the supervisor must be up
	if err != nil {
		return nil, err
	}
	agent.Close()
	pub := &publishing{c: c, dir: dir}
	for _, p := range ps {
		pp, err := publishPort(ctx, dir, p.host, p.guest)
		if err != nil {
			pub.undo(ctx)
			return nil, err
		}
		pub.ports = append(pub.ports, pp)
	}
	return pub, nil
}

func (p *publishing) undo(ctx context.Context) {
	for _, pp := range p.ports {
		_ = unpublishPort(context.WithoutCancel(ctx), p.dir, pp.GuestPort)
	}
	p.ports = nil
}

// end keeps the ports of a started service (and records them), or undoes
// them when the start failed.
func (p *publishing) end(ctx context.Context, service string, startErr error) ([]PublishedPort, error) {
	if len(p.ports) == 0 {
		return []PublishedPort{}, nil
	}
	if startErr != nil {
		p.undo(ctx)
		return []PublishedPort{}, nil
	}
	// Entries a restart or reset closed are dropped on the way, so a port
	// reused later is not credited to a service that no longer has it.
	open, oerr := publishedPorts(ctx, p.dir)
	err := updatePublished(ctx, p.dir, func(m map[string][]PublishedPort) {
		if oerr == nil {
			for svc, ports := range m {
				ports = slices.DeleteFunc(ports, func(pp PublishedPort) bool { return !slices.Contains(open, pp) })
				if len(ports) == 0 {
					delete(m, svc)
				} else {
					m[svc] = ports
				}
			}
		}
		m[service] = p.ports
	})
	if err != nil {
		p.undo(ctx)
		return []PublishedPort{}, err
	}
	return p.ports, nil
}

// unpublishService closes what a service published (on stop).
func (c *Client) unpublishService(ctx context.Context, id, service string) {
	dir, _, err := c.wsDir(id)
	if err != nil {
		return
	}
	var ports []PublishedPort
	_ = updatePublished(ctx, dir, func(m map[string][]PublishedPort) { ports = m[service]; delete(m, service) })
	for _, pp := range ports {
		_ = unpublishPort(context.WithoutCancel(ctx), dir, pp.GuestPort)
	}
}

// servicePorts returns the ports each service published that the
// supervisor still has open (none after a restart, reset or stop).
func (c *Client) servicePorts(ctx context.Context, id string) map[string][]PublishedPort {
	dir, _, err := c.wsDir(id)
	if err != nil {
		return nil
	}
	m, err := readPublished(dir)
	if err != nil || len(m) == 0 {
		return nil
	}
	open, err := publishedPorts(ctx, dir)
	if err != nil {
		return nil
	}
	out := map[string][]PublishedPort{}
	for svc, ports := range m {
		for _, pp := range ports {
			if slices.Contains(open, pp) {
				out[svc] = append(out[svc], pp)
			}
		}
	}
	return out
}

// withPorts fills the published ports of services (never nil).
func withPorts(svcs []Service, ports map[string][]PublishedPort) {
	for i := range svcs {
		svcs[i].PublishedPorts = ports[svcs[i].Name]
		if svcs[i].PublishedPorts == nil {
			svcs[i].PublishedPorts = []PublishedPort{}
		}
	}
}

func readPublished(dir vmdir.Dir) (map[string][]PublishedPort, error) {
	m := map[string][]PublishedPort{}
	b, err := os.ReadFile(dir.Path(publishedFile))
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// updatePublished changes publishedFile under the workspace's lock.
func updatePublished(ctx context.Context, dir vmdir.Dir, change func(map[string][]PublishedPort)) error {
	unlock, err := instance.Lock(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := readPublished(dir)
	if err != nil {
		m = map[string][]PublishedPort{} // a damaged file only loses the service names
	}
	change(m)
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(dir.Path(publishedFile), b, 0o600)
}
