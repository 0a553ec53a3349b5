package netstack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The guest's frames arrive the way QEMU's -netdev stream (and -netdev
// socket) sends them: a 4-byte big-endian length, then one Ethernet frame.
// The length is QEMU's word, and QEMU runs the guest: it is checked like
// any other guest byte.
const (
	// maxFrame bounds one frame: the MTU plus the Ethernet header, with
	// room for a VLAN tag. Anything larger ends the link.
	maxFrame = MTU + header.EthernetMinimumSize + 4
	// minFrame is an Ethernet header; shorter frames are dropped.
	minFrame = header.EthernetMinimumSize
)

// frameLink is a stack.LinkEndpoint (below the ethernet.Endpoint wrapper)
// that carries whole Ethernet frames over one stream connection in QEMU's
// framing. It reads on one goroutine (run) and delivers each frame into
// the stack inline: there is no queue and no goroutine per packet, so a
// guest that floods is slowed by its own socket, never buffered here.
type frameLink struct {
	conn net.Conn
	mac  tcpip.LinkAddress

	mu         sync.Mutex // guards dispatcher
	dispatcher stack.NetworkDispatcher

	wmu sync.Mutex // serialises writes of whole frames
	// wbuf is reused for the length prefixes of one WritePackets batch.
	wbuf []byte
	// writeErr is the first write failure; later writes are dropped.
	writeErr error
}

var _ stack.LinkEndpoint = (*frameLink)(nil)

func newFrameLink(conn net.Conn, mac tcpip.LinkAddress) *frameLink {
	return &frameLink{conn: conn, mac: mac}
}

// run reads frames until the connection fails or closes.
func (l *frameLink) run() error {
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(l.conn, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read frame length: %w", err)
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > maxFrame {
			return fmt.Errorf("frame of %d bytes is larger than %d: closing the guest's link", n, maxFrame)
		}
		// The stack keeps the bytes (the packet buffer owns them), so
		// each frame gets its own slice; its size is bounded above.
		frame := make([]byte, n)
		if _, err := io.ReadFull(l.conn, frame); err != nil {
			return fmt.Errorf("read frame: %w", err)
		}
		if n < minFrame {
			continue
		}
		l.mu.Lock()
		d := l.dispatcher
		l.mu.Unlock()
		if d == nil {
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		d.DeliverNetworkPacket(0, pkt) // the ethernet wrapper reads the type
		pkt.DecRef()
	}
}

// WritePackets sends a batch of frames (each already carrying its Ethernet
// header) with one writev.
func (l *frameLink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	list := pkts.AsSlice()
	if l.writeErr != nil {
		return 0, &tcpip.ErrClosedForSend{}
	}
	need := 4 * len(list)
	if cap(l.wbuf) < need {
		l.wbuf = make([]byte, need)
	}
	prefixes := l.wbuf[:need]
	bufs := make(net.Buffers, 0, 2*len(list))
	for i, p := range list {
		data := p.ToView().AsSlice()
		binary.BigEndian.PutUint32(prefixes[4*i:], uint32(len(data)))
		bufs = append(bufs, prefixes[4*i:4*i+4], data)
	}
	if _, err := bufs.WriteTo(l.conn); err != nil {
		l.writeErr = err
		return 0, &tcpip.ErrClosedForSend{}
	}
	return len(list), nil
}

func (l *frameLink) MTU() uint32                        { return MTU + header.EthernetMinimumSize }
func (l *frameLink) SetMTU(uint32)                      {}
func (l *frameLink) MaxHeaderLength() uint16            { return 0 }
func (l *frameLink) LinkAddress() tcpip.LinkAddress     { return l.mac }
func (l *frameLink) SetLinkAddress(a tcpip.LinkAddress) { l.mac = a }

// Capabilities: the guest computes its own checksums (QEMU's stream netdev
// offers the guest no checksum offload), so received ones need no second
// check here; ours are computed for the guest.
func (l *frameLink) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

func (l *frameLink) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}

func (l *frameLink) IsAttached() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dispatcher != nil
}

func (l *frameLink) Wait()                                   {}
func (l *frameLink) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }
func (l *frameLink) AddHeader(*stack.PacketBuffer)           {}
func (l *frameLink) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (l *frameLink) Close()                                  {}
func (l *frameLink) SetOnCloseAction(func())                 {}
