package netstack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// copyBuf is the relay buffer of one direction of one flow.
const copyBuf = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBuf); return &b }}

// handleTCP decides a guest's new TCP connection. It runs on the
// forwarder's goroutine for this SYN (at most MaxPendingSYN at once).
//
// Order: the engine decides the destination before any host socket exists.
// When the destination is bound to names (an allowlist, and no CIDR entry
// admits it), the guest's handshake is completed first and its first bytes
// are read (TLS server name or HTTP Host) and decided before the host
// connection is opened, so a connection with the wrong name never leaves
// the host. Otherwise the host connection is opened first, so a refused or
// unreachable destination is a RST to the guest.
func (st *Stack) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	dst := addrPort(id.LocalAddress, id.LocalPort)
	if ownAddress(dst.Addr()) {
		st.cfg.Engine.Record(netpolicy.Denial{Address: dst.Addr().String(), Port: int(dst.Port()),
			Reason: "tcp connection refused: an address of the guest network itself (nothing listens there)"})
		r.Complete(true)
		return
	}
	if v := st.cfg.Engine.DecideDial(dst, "tcp"); !v.Allowed {
		r.Complete(true)
		return
	}
	if !acquire(st.tcpFlows) {
		st.cfg.Engine.Record(netpolicy.Denial{Address: dst.Addr().String(), Port: int(dst.Port()),
			Reason: "tcp connection refused: the guest has " + strconv.Itoa(MaxTCPFlows) + " connections open"})
		r.Complete(true)
		return
	}
	needName := st.cfg.Engine.NeedsServerName(dst)
	var host net.Conn
	if !needName {
		c, err := st.cfg.Dialer(st.ctx, "tcp", dst.String())
		if err != nil {
			release(st.tcpFlows)
			r.Complete(true)
			return
		}
		host = c
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		release(st.tcpFlows)
		if host != nil {
			host.Close()
		}
		r.Complete(true)
		return
	}
	r.Complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	fast := setFlowBuffers(ep, st.fastTCP)
	guest := gonet.NewTCPConn(&wq, ep)
	st.wg.Add(1)
	go func() {
		defer st.wg.Done()
		defer release(st.tcpFlows)
		if fast {
			defer release(st.fastTCP)
		}
		st.serveTCP(guest, ep, host, dst)
	}()
}

// setFlowBuffers gives a new flow maxTCPBuffer each way when a fast slot
// is free (it reports true: the caller releases the slot when the flow
// ends), else minTCPBuffer. A size set here also pins the receive buffer:
// auto-tuning does not grow it past what the guest's budget allows.
func setFlowBuffers(ep tcpip.Endpoint, fastSlots chan struct{}) bool {
	size, fast := int64(minTCPBuffer), acquire(fastSlots)
	if fast {
		size = maxTCPBuffer
	}
	ep.SocketOptions().SetReceiveBufferSize(size, true)
	ep.SocketOptions().SetSendBufferSize(size, true)
	return fast
}

// serveTCP finishes the decision (server name) when needed, then relays.
func (st *Stack) serveTCP(guest *gonet.TCPConn, ep tcpip.Endpoint, host net.Conn, dst netip.AddrPort) {
	defer guest.Close()
	var first []byte
	if host == nil {
		name, peeked := peekServerName(guest, peekLimit, peekTimeout)
		first = peeked
		if v := st.cfg.Engine.DecideServerName(dst, name); !v.Allowed {
			abort(guest, ep)
			return
		}
		c, err := st.cfg.Dialer(st.ctx, "tcp", dst.String())
		if err != nil {
			abort(guest, ep)
			return
		}
		host = c
		if len(first) > 0 {
			if _, err := host.Write(first); err != nil {
				host.Close()
				return
			}
		}
	}
	defer host.Close()
	stop := context.AfterFunc(st.ctx, func() { guest.Close(); host.Close() })
	defer stop()
	relay(guest, host)
}

// abort resets a guest connection (SO_LINGER 0) instead of closing it
// cleanly, so the guest's client sees a refusal, not an empty answer.
func abort(c *gonet.TCPConn, ep tcpip.Endpoint) {
	ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: true, Timeout: 0})
	c.Close()
}

// relay copies both ways until both directions end. A direction that ends
// half-closes the other side's write, as TCP would.
func relay(guest *gonet.TCPConn, host net.Conn) {
	done := make(chan struct{}, 1)
	go func() {
		copyHalf(host, guest)
		if hc, ok := host.(interface{ CloseWrite() error }); ok {
			_ = hc.CloseWrite()
		}
		done <- struct{}{}
	}()
	copyHalf(guest, host)
	_ = guest.CloseWrite()
	<-done
}

// copyHalf copies with a pooled buffer until src ends or either side fails
// (either way this direction is over); the writer/reader wrappers hide
// ReadFrom/WriteTo, whose fallbacks would use 32 KiB buffers of their own.
func copyHalf(dst io.Writer, src io.Reader) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
}
