package agentapi

import (
	"fmt"
)

// EventElided is the exec event that says how many bytes of a stream the
// agent dropped between the head it streamed and the tail that follows
// (Event.Stream names the stream, Event.Elided the count). The tail's
// data events come right after it.
const EventElided = "elided"

// ElisionMarker is the line that stands in a capped output for the bytes
// dropped from its middle.
func ElisionMarker(n int64) string { return fmt.Sprintf("[... %d bytes elided ...]", n) }

// HeadTail caps one output stream at about limit bytes by keeping its
// first half (the head) and its last half (the tail, a ring), so that a
// reader sees both how a command started and how it ended, with a marked
// middle. The agent and the host use it alike: the agent to decide what
// to send, the host to bound what a guest sends, whatever it claims.
// Memory stays within limit bytes plus the ring's slack.
type HeadTail struct {
	headMax, tailMax int
	head             []byte
	ring             []byte // allocated on first use, tailMax bytes
	ringStart        int    // index of the oldest byte in ring
	ringLen          int    // bytes held in ring
	elided           int64  // bytes dropped between head and tail
}

// NewHeadTail returns a HeadTail for limit bytes (at least 2).
func NewHeadTail(limit int64) *HeadTail {
	limit = max(limit, 2)
	h := int(limit - limit/2)
	return &HeadTail{headMax: h, tailMax: int(limit / 2)}
}

// Add keeps p: the head fills first, then the tail ring, whose oldest
// bytes are elided once it is full. It returns the part of p that went
// into the head.
func (h *HeadTail) Add(p []byte) []byte {
	var kept []byte
	if room := h.headMax - len(h.head); room > 0 {
		n := min(room, len(p))
		if h.head == nil {
			h.head = make([]byte, 0, min(h.headMax, max(n, 4<<10)))
		}
		h.head = append(h.head, p[:n]...)
		kept, p = p[:n], p[n:]
	}
	if len(p) == 0 || h.tailMax == 0 {
		h.elided += int64(len(p))
		return kept
	}
	if h.ring == nil {
		h.ring = make([]byte, h.tailMax)
	}
	if len(p) >= h.tailMax {
		// Only p's own end survives.
		h.elided += int64(h.ringLen + len(p) - h.tailMax)
		copy(h.ring, p[len(p)-h.tailMax:])
		h.ringStart, h.ringLen = 0, h.tailMax
		return kept
	}
	if over := h.ringLen + len(p) - h.tailMax; over > 0 {
		h.elided += int64(over)
		h.ringStart = (h.ringStart + over) % h.tailMax
		h.ringLen -= over
	}
	end := (h.ringStart + h.ringLen) % h.tailMax
	n := copy(h.ring[end:], p)
	copy(h.ring, p[n:])
	h.ringLen += len(p)
	return kept
}

// HeadFull reports whether more bytes go to the tail.
func (h *HeadTail) HeadFull() bool { return len(h.head) >= h.headMax }

// Elided is the number of bytes dropped between head and tail.
func (h *HeadTail) Elided() int64 { return h.elided }

// Tail returns the tail's bytes in order.
func (h *HeadTail) Tail() []byte {
	out := make([]byte, 0, h.ringLen)
	end := min(h.ringStart+h.ringLen, h.tailMax)
	out = append(out, h.ring[h.ringStart:end]...)
	return append(out, h.ring[:h.ringLen-(end-h.ringStart)]...)
}

// StartTail empties the tail and adds n to the elided count: the sender
// dropped n bytes between its head and its tail (they include the ones
// the tail held so far, which it had streamed live) and sends its tail
// next.
func (h *HeadTail) StartTail(n int64) {
	h.headMax = len(h.head) // what follows is tail, not head
	h.elided += max(n, 0)
	h.ringStart, h.ringLen = 0, 0
}

// Bytes returns head, the marker line when bytes were elided, and tail.
func (h *HeadTail) Bytes() []byte {
	out := make([]byte, 0, len(h.head)+h.ringLen+64)
	out = append(out, h.head...)
	if h.elided > 0 {
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, '\n')
		}
		out = append(out, ElisionMarker(h.elided)...)
		out = append(out, '\n')
	}
	return append(out, h.Tail()...)
}
