package netstack

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// maxDatagram bounds one relayed datagram.
const maxDatagram = 64 << 10

// admitUDP decides the first datagram of a new UDP flow (packets of known
// flows go straight to their endpoint). It runs inline on the frame reader
// and takes a flow slot when it admits; false makes the stack answer ICMP
// port unreachable.
func (st *Stack) admitUDP(id stack.TransportEndpointID) bool {
	dst := addrPort(id.LocalAddress, id.LocalPort)
	if ownAddress(dst.Addr()) {
		st.cfg.Engine.Record(netpolicy.Denial{Address: dst.Addr().String(), Port: int(dst.Port()),
			Reason: "udp refused: an address of the guest network itself (only the resolver at " + DNS.String() + ":53 answers)"})
		return false
	}
	if v := st.cfg.Engine.DecideDial(dst, "udp"); !v.Allowed {
		return false
	}
	if !acquire(st.udpFlows) {
		st.cfg.Engine.Record(netpolicy.Denial{Address: dst.Addr().String(), Port: int(dst.Port()),
			Reason: "udp refused: the guest has " + strconv.Itoa(MaxUDPFlows) + " udp flows open"})
		return false
	}
	return true
}

// handleUDP serves an admitted flow: its endpoint is made inline (so the
// first datagram is kept), the host socket and the relay on a goroutine.
func (st *Stack) handleUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	dst := addrPort(id.LocalAddress, id.LocalPort)
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	if err != nil {
		release(st.udpFlows)
		return
	}
	guest := gonet.NewUDPConn(&wq, ep)
	st.wg.Add(1)
	go func() {
		defer st.wg.Done()
		defer release(st.udpFlows)
		defer guest.Close()
		host, err := st.cfg.Dialer(st.ctx, "udp", dst.String())
		if err != nil {
			return
		}
		defer host.Close()
		stop := context.AfterFunc(st.ctx, func() { guest.Close(); host.Close() })
		defer stop()
		relayUDP(guest, host, dst)
	}()
}

// relayUDP copies datagrams both ways until the flow is idle for udpIdle
// or either side fails.
func relayUDP(guest *gonet.UDPConn, host net.Conn, dst netip.AddrPort) {
	idle := func(c net.Conn) { _ = c.SetReadDeadline(time.Now().Add(udpIdle)) }
	done := make(chan struct{}, 1)
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, maxDatagram)
		for {
			idle(host)
			n, err := host.Read(buf)
			if err != nil {
				guest.Close()
				return
			}
			if _, err := guest.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, maxDatagram)
	for {
		idle(guest)
		n, err := guest.Read(buf)
		if err != nil {
			break
		}
		if _, err := host.Write(buf[:n]); err != nil {
			break
		}
	}
	host.Close()
	<-done
}
