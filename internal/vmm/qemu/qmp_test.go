package qemu

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dialFake dials a fake QEMU that answers every command at once except
// "hang", which it never answers, and "nope", which it refuses.
func dialFake(t *testing.T) *qmp {
	t.Helper()
	never := make(chan struct{})
	t.Cleanup(func() { close(never) })
	f := &fakeQMP{answer: func(cmd string) (any, string) {
		switch cmd {
		case "hang":
			<-never
		case "nope":
			return nil, "no such command"
		}
		return nil, ""
	}}
	path := filepath.Join(t.TempDir(), "qmp.sock")
	f.serve(t, path)
	q, err := dialQMP(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// A cancelled caller is not kept waiting for a QEMU that does not answer
// until some deadline: the cancel cuts the read short. The connection,
// which may still get the late reply, is not used again: the next call
// connects anew and gets its own answer (a failed save still resumes its
// guest through the same client).
func TestQMPCancelCutsCallShort(t *testing.T) {
	q := dialFake(t)
	ctx, cancel := context.WithCancel(context.Background()) // no deadline: 30 s default
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := q.call(ctx, "hang", nil, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("call = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("cancelled call returned after %v", d)
	}
	old := q.conn
	if _, err := q.call(context.Background(), "query-status", nil, nil); err != nil {
		t.Fatalf("call after a cut-short one: %v", err)
	}
	if q.conn == old {
		t.Fatal("the call after a cut-short one used the out-of-step connection")
	}
}

// An earlier call's deadline does not outlive it: a later call without
// one still writes and reads (each exchange sets its own bounds).
func TestQMPDeadlineDoesNotLeakIntoLaterCalls(t *testing.T) {
	q := dialFake(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	if _, err := q.call(ctx, "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}
	cancel()
	time.Sleep(150 * time.Millisecond)
	if _, err := q.call(context.Background(), "query-status", nil, nil); err != nil {
		t.Fatalf("call after an earlier call's deadline passed: %v", err)
	}
}

// QEMU refusing a command is a whole reply: the caller sees the refusal
// and the connection stays usable (callers try a command and go on).
func TestQMPRefusalKeepsConnection(t *testing.T) {
	q := dialFake(t)
	if _, err := q.call(context.Background(), "nope", nil, nil); err == nil || !strings.Contains(err.Error(), "no such command") {
		t.Fatalf("refused call = %v", err)
	}
	if _, err := q.call(context.Background(), "query-status", nil, nil); err != nil {
		t.Fatalf("call after a refusal: %v", err)
	}
}
