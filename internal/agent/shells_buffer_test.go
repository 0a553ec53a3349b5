package agent

import (
	"context"
	"testing"
	"time"
)

// returnsWithin reports whether f returns within d.
func returnsWithin(d time.Duration, f func()) bool {
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// wait wakes on output past the cursor or the end of output; waitClosed
// only on the end of output; both give up with their context.
func TestOutBufWait(t *testing.T) {
	bg := context.Background()
	b := newOutBuf(64)
	_, _ = b.Write([]byte("abc"))
	if !returnsWithin(time.Second, func() { b.wait(bg, 2) }) {
		t.Fatal("wait blocked with output past the cursor")
	}
	woke := make(chan struct{})
	go func() { b.wait(bg, 3); close(woke) }()
	time.Sleep(20 * time.Millisecond)
	_, _ = b.Write([]byte("d"))
	if !returnsWithin(time.Second, func() { <-woke }) {
		t.Fatal("wait missed a write")
	}
	closed := make(chan struct{})
	go func() { b.waitClosed(bg); close(closed) }()
	_, _ = b.Write([]byte("e"))
	if returnsWithin(50*time.Millisecond, func() { <-closed }) {
		t.Fatal("waitClosed returned on a write")
	}
	ctx, cancel := context.WithTimeout(bg, 20*time.Millisecond)
	defer cancel()
	if !returnsWithin(time.Second, func() { b.wait(ctx, 100) }) {
		t.Fatal("wait outlived its context")
	}
	b.close()
	if !returnsWithin(time.Second, func() { <-closed }) || !returnsWithin(time.Second, func() { b.wait(bg, 100) }) {
		t.Fatal("the end of output woke nobody")
	}
}
