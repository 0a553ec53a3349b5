package agent

import (
	"context"
	"sync"
)

// outBuf keeps the most recent output of a process, addressed by absolute
// byte offsets since the process started. It holds at least the last limit
// bytes (up to limit+limit/4 before it trims, so trimming is amortized) and
// always starts on a UTF-8 character boundary when it has dropped output.
type outBuf struct {
	mu     sync.Mutex
	limit  int
	start  int64 // absolute offset of buf[0]
	buf    []byte
	closed bool          // the writer is done
	notify chan struct{} // closed and replaced on every change
}

func newOutBuf(limit int) *outBuf {
	return &outBuf{limit: limit, notify: make(chan struct{})}
}

func (b *outBuf) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if slack := b.limit / 4; len(b.buf) > b.limit+slack {
		drop := len(b.buf) - b.limit
		// Do not leave a partial character at the start.
		for i := 0; i < 3 && drop < len(b.buf) && b.buf[drop]&0xC0 == 0x80; i++ {
			drop++
		}
		n := copy(b.buf, b.buf[drop:])
		b.buf = b.buf[:n]
		b.start += int64(drop)
	}
	b.wake()
	return len(p), nil
}

// close marks the end of output.
func (b *outBuf) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		b.wake()
	}
}

func (b *outBuf) wake() {
	close(b.notify)
	b.notify = make(chan struct{})
}

// snapshot returns a copy of the kept bytes from offset from (clamped to
// the kept range), the absolute offset where that copy starts, the
// absolute end and whether output has ended.
func (b *outBuf) snapshot(from int64) (data []byte, start, end int64, closed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	end = b.start + int64(len(b.buf))
	start = max(from, b.start)
	start = min(start, end)
	data = append([]byte(nil), b.buf[start-b.start:]...)
	return data, start, end, b.closed
}

// bounds returns the kept range and whether output has ended.
func (b *outBuf) bounds() (start, end int64, closed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.start, b.start + int64(len(b.buf)), b.closed
}

// wait blocks until output extends past cursor, output ends, or ctx ends.
func (b *outBuf) wait(ctx context.Context, cursor int64) {
	b.waitUntil(ctx, func() bool { return b.start+int64(len(b.buf)) > cursor || b.closed })
}

// waitClosed blocks until output ends or ctx ends.
func (b *outBuf) waitClosed(ctx context.Context) {
	b.waitUntil(ctx, func() bool { return b.closed })
}

// waitUntil blocks until done (called with b.mu held) holds or ctx ends:
// every change wakes it to look again.
func (b *outBuf) waitUntil(ctx context.Context, done func() bool) {
	for {
		b.mu.Lock()
		if done() {
			b.mu.Unlock()
			return
		}
		ch := b.notify
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}
