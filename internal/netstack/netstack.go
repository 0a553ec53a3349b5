// Package netstack is a guest's network: a userspace TCP/IP stack (gVisor's
// netstack) owned by the supervisor, attached to the VMM's NIC by a stream
// socket in QEMU's framing (-netdev stream / socket, fd=N). Every guest
// connection and DNS query ends here and is decided by a netpolicy.Engine
// before anything is sent on the host:
//
//   - DNS (to the stack's resolver address, UDP and TCP): the engine's
//     DecideQuery first; a refused name gets NXDOMAIN and never reaches the
//     upstream resolver (so a TXT lookup cannot carry data out). Answers of
//     admitted names teach the engine their addresses (Learn).
//   - TCP and UDP flows: DecideDial before any host socket is opened; a
//     refused TCP flow gets a RST, a refused UDP flow an ICMP port
//     unreachable. Addresses of the stack itself are never dialled.
//   - With an allowlist, the first bytes of a TCP flow (a TLS ClientHello's
//     server name or an HTTP Host header, bounded in size and time) must
//     name a name the address was learned from: DecideServerName.
//   - Published ports: a listener on the host's 127.0.0.1 forwarding to a
//     guest port (Publish / Unpublish).
//
// Why not gvisor-tap-vsock's virtualnetwork: its TCP/UDP forwarders dial
// before any hook could decide, its DNS forwards every name, and its switch
// allocates whatever frame length arrives. This package uses the same
// gVisor netstack that gvisor-tap-vsock builds on, with the decision points
// ours and every buffer bounded.
//
// Bounds (a guest can make the host hold no more than this): frames of at
// most MTU+18 bytes, read and delivered inline by one goroutine; at most
// MaxTCPFlows TCP and MaxUDPFlows UDP flows, MaxPendingSYN half-open
// handshakes, MaxDNSInFlight upstream DNS exchanges; TCP buffers of
// maxTCPBuffer each way for at most fastTCPFlows flows at once and of
// minTCPBuffer for every other (so a guest's flows hold at most
// MaxTCPBufferBytes, where 256 flows of 2 MiB each way used to allow 1 GiB);
// UDP flows end after udpIdle.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// The guest network's addresses. They are the ones QEMU's user networking
// used (the guest init configures them statically), so a guest sees the
// same network whichever side serves it.
var (
	Subnet  = netip.MustParsePrefix("10.0.2.0/24")
	Gateway = netip.MustParseAddr("10.0.2.2")
	DNS     = netip.MustParseAddr("10.0.2.3")
	GuestIP = netip.MustParseAddr("10.0.2.15")
)

// MTU is the guest NIC's MTU (the IP packet size).
const MTU = 1500

// Bounds; see the package comment.
const (
	MaxTCPFlows    = 256
	MaxUDPFlows    = 128
	MaxPendingSYN  = 64
	MaxDNSInFlight = 32
	// A TCP flow's buffers, each way: the first fastTCPFlows flows open
	// at once get maxTCPBuffer (a download runs at full speed), the
	// others minTCPBuffer, so many idle or stalled flows cannot make the
	// supervisor hold a buffer each.
	maxTCPBuffer = 2 << 20
	minTCPBuffer = 64 << 10
	fastTCPFlows = 8
	// MaxTCPBufferBytes bounds what the guest's TCP flows may hold in the
	// stack's buffers, both ways, all flows together.
	MaxTCPBufferBytes = 2 * (fastTCPFlows*maxTCPBuffer + (MaxTCPFlows-fastTCPFlows)*minTCPBuffer)
	udpIdle           = 60 * time.Second
	dialTimeout       = 10 * time.Second
)

// gatewayMAC is the stack's own MAC address (locally administered).
var gatewayMAC = tcpip.LinkAddress([]byte{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02})

// Config configures a Stack.
type Config struct {
	// Engine decides every query and connection. Required.
	Engine *netpolicy.Engine
	// Upstream is the DNS server ("host:port") admitted queries are sent
	// to; empty means the first nameserver of /etc/resolv.conf.
	Upstream string
	// Logger receives operational messages (nil: silent).
	Logger *slog.Logger
	// Dialer opens host sockets for admitted flows (nil: a net.Dialer).
	// Tests use it to observe what would have left the host.
	Dialer func(ctx context.Context, network, address string) (net.Conn, error)
}

// Stack is one guest's network.
type Stack struct {
	cfg      Config
	log      *slog.Logger
	s        *stack.Stack
	upstream string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	tcpFlows chan struct{} // semaphore of live TCP flows
	fastTCP  chan struct{} // semaphore of TCP flows with maxTCPBuffer buffers
	udpFlows chan struct{} // semaphore of live UDP flows
	dnsSlots chan struct{} // semaphore of upstream DNS exchanges

	mu        sync.Mutex
	link      *frameLink
	published map[int]*published // by guest port
	closed    bool
}

// New builds the stack. Attach connects the guest.
func New(cfg Config) (*Stack, error) {
	if cfg.Engine == nil {
		return nil, errors.New("netstack: no policy engine")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	up := cfg.Upstream
	if up == "" {
		var err error
		if up, err = systemResolver(); err != nil {
			return nil, err
		}
	}
	if _, _, err := net.SplitHostPort(up); err != nil {
		return nil, fmt.Errorf("dns upstream %q: %w", up, err)
	}
	if cfg.Dialer == nil {
		d := &net.Dialer{Timeout: dialTimeout}
		cfg.Dialer = d.DialContext
	}
	ctx, cancel := context.WithCancel(context.Background())
	st := &Stack{cfg: cfg, log: log, upstream: up, ctx: ctx, cancel: cancel,
		tcpFlows:  make(chan struct{}, MaxTCPFlows),
		fastTCP:   make(chan struct{}, fastTCPFlows),
		udpFlows:  make(chan struct{}, MaxUDPFlows),
		dnsSlots:  make(chan struct{}, MaxDNSInFlight),
		published: map[int]*published{},
	}
	return st, nil
}

// Attach runs the guest's network over conn (the supervisor's end of the
// VMM's stream socket) until conn fails or the stack closes. It can be
// called once.
func (st *Stack) Attach(conn net.Conn) error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		conn.Close()
		return net.ErrClosed
	}
	if st.link != nil {
		st.mu.Unlock()
		conn.Close()
		return errors.New("netstack: a guest is already attached")
	}
	l := newFrameLink(conn, gatewayMAC)
	st.link = l
	st.mu.Unlock()
	if err := st.build(l); err != nil {
		conn.Close()
		return err
	}
	err := l.run()
	conn.Close()
	return err
}

// build creates the gVisor stack on link l and installs the handlers.
func (st *Stack) build(l *frameLink) error {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	if err := s.CreateNIC(nicID, ethernet.New(l)); err != nil {
		return fmt.Errorf("netstack: create nic: %s", err)
	}
	for _, a := range []netip.Addr{Gateway, DNS} {
		if err := s.AddProtocolAddress(nicID, tcpip.ProtocolAddress{
			Protocol:          ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddrFrom4(a.As4()).WithPrefix(),
		}, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netstack: add address %s: %s", a, err)
		}
	}
	// Promiscuous: the stack accepts packets for every destination (each
	// is a flow to decide); spoofing: it answers from those destinations.
	s.SetPromiscuousMode(nicID, true)
	s.SetSpoofing(nicID, true)
	sub, err := tcpip.NewSubnet(tcpip.AddrFrom4(Subnet.Masked().Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(Subnet.Bits(), 32)))
	if err != nil {
		return fmt.Errorf("netstack: subnet: %w", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: sub, NIC: nicID}})
	bufOpt := func(def int) (tcpip.TCPReceiveBufferSizeRangeOption, tcpip.TCPSendBufferSizeRangeOption) {
		return tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: def, Max: maxTCPBuffer},
			tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: def, Max: maxTCPBuffer}
	}
	// Every flow starts small; handleTCP grows the fast ones. Published
	// ports' flows (at most MaxPublishedConns a port, opened from the
	// host) keep this default and its auto-tuning.
	rcv, snd := bufOpt(minTCPBuffer)
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	for _, o := range []tcpip.SettableTransportProtocolOption{&rcv, &snd, &sack, &moderate} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fmt.Errorf("netstack: tcp option: %s", err)
		}
	}
	st.mu.Lock()
	st.s = s
	st.mu.Unlock()
	if err := st.serveDNS(); err != nil {
		return err
	}
	tf := tcp.NewForwarder(s, 0, MaxPendingSYN, st.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tf.HandlePacket)
	uf := udp.NewForwarder(s, st.handleUDP)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		// false makes the stack answer ICMP port unreachable.
		if !st.admitUDP(id) {
			return false
		}
		return uf.HandlePacket(id, pkt)
	})
	return nil
}

const nicID = 1

// Close stops every published port and flow and the stack itself.
func (st *Stack) Close() error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	pubs := st.published
	st.published = map[int]*published{}
	l, s := st.link, st.s
	st.mu.Unlock()
	for _, p := range pubs {
		p.close()
	}
	st.cancel()
	if l != nil {
		l.conn.Close()
	}
	if s != nil {
		s.Close()
	}
	st.wg.Wait()
	if s != nil {
		s.Wait()
	}
	return nil
}

// fullAddr is a full address on the stack's NIC.
func fullAddr(a netip.Addr, port uint16) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(a.As4()), Port: port}
}

// addrPort converts a stack address to a netip one.
func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip.Unmap(), port)
}

// ownAddress reports whether a is in the guest network itself (the gateway,
// the resolver, the guest): never dialled on the host, whatever the policy
// says about 10.0.0.0/8.
func ownAddress(a netip.Addr) bool { return Subnet.Contains(a) }

// acquire takes a slot of sem if one is free.
func acquire(sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	default:
		return false
	}
}

func release(sem chan struct{}) { <-sem }

// Policy is the policy in force.
func (st *Stack) Policy() netpolicy.Policy { return st.cfg.Engine.Policy() }

// SetPolicy changes the policy of the running guest at once: later queries
// and connections are decided by p (see netpolicy.Engine.Update). Open
// connections stay; a narrowing revokes learned addresses; a policy without
// published ports closes those published. Switching the
// network off or on needs a restart (the NIC is there or not), so p must
// stay networked.
func (st *Stack) SetPolicy(p netpolicy.Policy) error {
	if !p.Mode.Networked() {
		return errdefs.New(errdefs.ErrFailedPrecondition, "stop it and start it again without a network",
			"a running guest's network cannot be switched off live")
	}
	if err := st.cfg.Engine.Update(p); err != nil {
		return err
	}
	if !p.Mode.Publishes() {
		// A policy without published ports closes the ones open.
		st.mu.Lock()
		pubs := st.published
		st.published = map[int]*published{}
		st.mu.Unlock()
		for _, pp := range pubs {
			pp.close()
		}
	}
	return nil
}

// Denials drains the lookups and connections refused since the last call.
func (st *Stack) Denials() []netpolicy.Denial { return st.cfg.Engine.Denials() }
