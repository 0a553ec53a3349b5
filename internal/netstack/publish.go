package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// MaxPublishedConns bounds the connections open through one published port.
const MaxPublishedConns = 64

// MinHostPort is the lowest host port a guest port may be published on.
// Ports below it are privileged: as root (pyro often is) the supervisor
// could bind them, and a guest or a model would then answer on the host's
// loopback where local programs expect a system service (53, 80, 443,
// 631...). No sandbox needs one; a proxy can forward a privileged port.
const MinHostPort = 1024

// CheckHostPort refuses a host port a guest port may not be published on:
// 0 (pick a free port) or MinHostPort-65535. Every layer that takes a host
// port from a caller (SDK, supervisor, stack) checks it.
func CheckHostPort(port int) error {
	if port == 0 || (port >= MinHostPort && port <= 65535) {
		return nil
	}
	hint := fmt.Sprintf("use a host port of %d-65535, or 0 to pick a free one", MinHostPort)
	if port > 0 && port < MinHostPort {
		return errdefs.New(errdefs.ErrInvalidArgument, hint, "host port %d is privileged (below %d); pyro does not publish guest ports on it", port, MinHostPort)
	}
	return errdefs.New(errdefs.ErrInvalidArgument, hint, "host port %d out of range", port)
}

// PublishedPort is a host loopback port forwarded to a guest TCP port.
type PublishedPort struct {
	HostAddress string `json:"host_address"`
	HostPort    int    `json:"host_port"`
	GuestPort   int    `json:"guest_port"`
}

type published struct {
	port   PublishedPort
	ln     net.Listener
	slots  chan struct{}
	ctx    context.Context // ends when the port is unpublished
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Publish listens on 127.0.0.1:hostPort (0 picks a free port; see
// CheckHostPort) and forwards
// each connection to the guest's guestPort. A guest port is published at
// most once; a host port already bound is a failed precondition.
func (st *Stack) Publish(hostPort, guestPort int) (PublishedPort, error) {
	if err := CheckHostPort(hostPort); err != nil {
		return PublishedPort{}, err
	}
	if guestPort < 1 || guestPort > 65535 {
		return PublishedPort{}, errdefs.New(errdefs.ErrInvalidArgument, "use 1-65535", "guest port %d out of range", guestPort)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed || st.s == nil {
		return PublishedPort{}, errdefs.New(errdefs.ErrFailedPrecondition, "wait until the guest is running", "the guest network is not up")
	}
	if p, ok := st.published[guestPort]; ok {
		return PublishedPort{}, errdefs.New(errdefs.ErrAlreadyExists, "unpublish it first",
			"guest port %d is already published on 127.0.0.1:%d", guestPort, p.port.HostPort)
	}
	ln, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(hostPort)))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return PublishedPort{}, errdefs.Wrap(errdefs.ErrFailedPrecondition, err,
				"choose another host port, or 0 to pick a free one", "host port %d is already in use", hostPort)
		}
		return PublishedPort{}, errdefs.Wrap(errdefs.ErrUnavailable, err, "", "listen on 127.0.0.1:%d", hostPort)
	}
	ctx, cancel := context.WithCancel(st.ctx)
	p := &published{ln: ln, slots: make(chan struct{}, MaxPublishedConns), ctx: ctx, cancel: cancel,
		port: PublishedPort{HostAddress: "127.0.0.1", HostPort: ln.Addr().(*net.TCPAddr).Port, GuestPort: guestPort}}
	st.published[guestPort] = p
	p.wg.Add(1)
	go st.acceptPublished(p)
	return p.port, nil
}

// Unpublish closes the published guest port and its open connections.
func (st *Stack) Unpublish(guestPort int) error {
	st.mu.Lock()
	p, ok := st.published[guestPort]
	delete(st.published, guestPort)
	st.mu.Unlock()
	if !ok {
		return errdefs.New(errdefs.ErrNotFound, "", "guest port %d is not published", guestPort)
	}
	p.close()
	return nil
}

// Published lists the published ports.
func (st *Stack) Published() []PublishedPort {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]PublishedPort, 0, len(st.published))
	for _, p := range st.published {
		out = append(out, p.port)
	}
	return out
}

func (st *Stack) acceptPublished(p *published) {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !acquire(p.slots) {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer release(p.slots)
			defer c.Close()
			st.forwardPublished(p.ctx, c, p.port.GuestPort)
		}()
	}
}

// forwardPublished connects host conn c to the guest port, from the
// gateway address, until both sides end or ctx does.
func (st *Stack) forwardPublished(ctx context.Context, c net.Conn, guestPort int) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	g, err := gonet.DialTCPWithBind(dctx, st.s, fullAddr(Gateway, 0), fullAddr(GuestIP, uint16(guestPort)), ipv4.ProtocolNumber)
	cancel()
	if err != nil {
		return
	}
	defer g.Close()
	stop := context.AfterFunc(ctx, func() { g.Close(); c.Close() })
	defer stop()
	relay(g, c)
}

// close stops the listener and every connection, and waits for them.
func (p *published) close() {
	p.cancel()
	p.ln.Close()
	p.wg.Wait()
}
