package netstack

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/pyro-mcp/pyro/internal/netpolicy"
)

// TestTCPBuffersBoundedPerGuest plays a guest that opens many flows to a
// server that never reads and writes into each until it blocks: what it
// got accepted is what the supervisor holds for it. With 2 MiB buffers per
// flow (1 MiB by default) that grew with the flow count; now only a few
// flows get large buffers and the rest small ones.
func TestTCPBuffersBoundedPerGuest(t *testing.T) {
	e := newEnv(t, netpolicy.Policy{Mode: netpolicy.Egress}, &world{}, nil)
	// The guest's own send buffer is kept small, so what a write gets
	// accepted measures the supervisor's side.
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 16 << 10, Max: 16 << 10}
	if err := e.guest.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	// The host end of every flow is a pipe nobody reads.
	e.st.cfg.Dialer = func(ctx context.Context, network, address string) (net.Conn, error) {
		a, b := net.Pipe()
		mu.Lock()
		held = append(held, b)
		mu.Unlock()
		return a, nil
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	const flows = 96
	var accepted atomic.Int64
	var wg sync.WaitGroup
	chunk := make([]byte, 8<<20)
	for i := range flows {
		c, err := e.dialTCP(netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), uint16(1000+i)).String())
		if err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			n, _ := c.Write(chunk)
			accepted.Add(int64(n))
		}()
	}
	wg.Wait()
	// Each flow: its receive buffer, the relay's copy buffer, the guest's
	// send buffer and windows' slack; the fast flows get maxTCPBuffer.
	bound := int64(8*(maxTCPBuffer+copyBuf+64<<10) + (flows-8)*(64<<10+copyBuf+64<<10))
	t.Logf("%d flows got %d KiB accepted (bound %d KiB)", flows, accepted.Load()>>10, bound>>10)
	if accepted.Load() > bound {
		t.Fatalf("%d flows made the stack hold %d KiB, over %d KiB", flows, accepted.Load()>>10, bound>>10)
	}
	if accepted.Load() < int64(8*minTCPBuffer) {
		t.Fatalf("only %d bytes accepted: the flows did not run", accepted.Load())
	}
}
