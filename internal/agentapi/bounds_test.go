package agentapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// repeatReader yields n bytes of b repeated, without holding them.
type repeatReader struct {
	b []byte
	n int64
	i int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, io.EOF
	}
	k := 0
	for k < len(p) && r.n > 0 {
		c := copy(p[k:], r.b[r.i:])
		if int64(c) > r.n {
			c = int(r.n)
		}
		k += c
		r.n -= int64(c)
		r.i = (r.i + c) % len(r.b)
	}
	return k, nil
}

// allocatedBy runs f and returns the bytes it allocated (whole process, so
// keep other goroutines quiet).
func allocatedBy(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// samplePeakHeap records the peak heap in use above the current level
// until stop is called.
func samplePeakHeap(peak *uint64) (stop func()) {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	base := m.HeapInuse
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > base && m.HeapInuse-base > *peak {
				*peak = m.HeapInuse - base
			}
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return func() { close(done); <-finished }
}

// A replaced agent sends one 256 MiB stdout event and a 256 MiB result
// (#12.6). The host refuses the line at MaxEventLineBytes: it neither
// accepts the output nor allocates it.
func TestExecRefusesHugeEventLine(t *testing.T) {
	for _, tc := range []struct{ name, prefix, suffix string }{
		{"stdout event", `{"type":"stdout","data":"`, `"}` + "\n"},
		{"exit result", `{"type":"exit","result":{"exit_code":0,"stdout":"`, `"}}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mux := http.NewServeMux()
			mux.HandleFunc("POST "+PathExec, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, tc.prefix)
				_, _ = io.Copy(w, &repeatReader{b: []byte("QUFB"), n: 256 << 20})
				_, _ = io.WriteString(w, tc.suffix)
			})
			c, _ := fakeAgent(t, mux)
			var err error
			alloc := allocatedBy(func() {
				_, err = c.Exec(ctx(t), ExecRequest{Argv: []string{"x"}}, nil)
			})
			if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "longer than") {
				t.Fatalf("got %v", err)
			}
			// The pipe and yamux move the bytes in small frames; the
			// decoder holds one line buffer.
			if alloc > 32<<20 {
				t.Fatalf("host allocated %d MiB for a refused reply", alloc>>20)
			}
		})
	}
}

// A guest that streams far more output than max_output_bytes in legal
// events gets it cut on the host and marked truncated, even when its
// result claims otherwise; memory stays near the cap.
func TestExecCapsOutputOnHost(t *testing.T) {
	chunk := bytes.Repeat([]byte("y"), MaxEventDataBytes)
	line := []byte(`{"type":"stdout","data":"` + base64.StdEncoding.EncodeToString(chunk) + `"}` + "\n")
	const events = 1024 // 64 MiB of output against a 1 MiB cap
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathExec, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(w, &repeatReader{b: line, n: int64(len(line)) * events})
		_, _ = io.WriteString(w, `{"type":"stderr","data":"ZXJy"}`+"\n")
		_, _ = io.WriteString(w, `{"type":"exit","result":{"exit_code":3,"stdout":"forged","stdout_truncated":false}}`+"\n")
	})
	c, _ := fakeAgent(t, mux)
	var streamed int
	var res ExecResult
	var err error
	var peak uint64
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	alloc := allocatedBy(func() {
		stop := samplePeakHeap(&peak)
		defer stop()
		res, err = c.Exec(ctx(t), ExecRequest{Argv: []string{"x"}}, func(s string, p []byte) {
			if s == EventStdout {
				streamed += len(p)
			}
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	marker := "\n" + ElisionMarker(events*MaxEventDataBytes-DefaultMaxOutputBytes) + "\n"
	if len(res.Stdout) != DefaultMaxOutputBytes+len(marker) || !strings.Contains(res.Stdout, marker) || streamed != DefaultMaxOutputBytes || !res.StdoutTruncated {
		t.Fatalf("stdout %d, streamed %d, truncated %v", len(res.Stdout), streamed, res.StdoutTruncated)
	}
	if res.Stderr != "err" || res.StderrTruncated || res.ExitCode != 3 || strings.Contains(res.Stdout, "forged") {
		t.Fatalf("result %+v", res)
	}
	// Every event is decoded (64 KiB each, once), so the total allocated
	// grows with the stream, but what is held never passes the cap.
	t.Logf("allocated %d MiB in total for 64 MiB of guest output, peak heap %d MiB", alloc>>20, peak>>20)
	// The fake agent runs in this process too (its yamux window is 8 MiB);
	// holding the output, as the old result did, would pass 64 MiB.
	if peak > 40<<20 {
		t.Fatalf("host heap peaked at %d MiB", peak>>20)
	}
}

func TestReplyCapped(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"agent_version":"`)
		_, _ = io.Copy(w, &repeatReader{b: []byte("v"), n: 256 << 20})
		_, _ = io.WriteString(w, `"}`)
	})
	mux.HandleFunc("GET "+PathServices, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"services":[`)
		_, _ = io.Copy(w, &repeatReader{b: []byte(`{},`), n: 3 << 20})
		_, _ = io.WriteString(w, `{}]}`)
	})
	c, _ := fakeAgent(t, mux)
	var err error
	alloc := allocatedBy(func() { _, err = c.Health(ctx(t)) })
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("got %v", err)
	}
	// TotalAlloc counts the whole process, the fake agent's writer too, and
	// that grows with scheduling on a loaded host; the old code allocated
	// the whole 256 MiB, so 8× the cap still tells them apart.
	if alloc > 8*MaxReplyBytes {
		t.Fatalf("host allocated %d MiB for a refused reply", alloc>>20)
	}
	// A list within the byte bound but with more entries than any agent
	// keeps is refused before it is built.
	alloc = allocatedBy(func() { _, err = c.ListServices(ctx(t)) })
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("list: %v", err)
	}
	// (It used to decode into ~350 MiB of structs.)
	if alloc > 64<<20 {
		t.Fatalf("host allocated %d MiB for a refused list", alloc>>20)
	}
}

// A guest that stops answering fails each call at its own deadline, with
// unavailable and a hint, not at the caller's.
func TestGuestDeadlines(t *testing.T) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	mux := http.NewServeMux()
	silent := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}
	mux.HandleFunc("POST "+PathExec, silent)
	mux.HandleFunc("GET "+PathShells+"/{id}/read", silent)
	c, _ := fakeAgent(t, mux)
	defer func(g time.Duration) { execGrace, callTimeout = g, CallTimeout }(execGrace)
	execGrace, callTimeout = 200*time.Millisecond, 300*time.Millisecond

	start := time.Now()
	_, err := c.Exec(context.Background(), ExecRequest{Argv: []string{"x"}, TimeoutMS: 300}, nil)
	if !errors.Is(err, errdefs.ErrUnavailable) || errdefs.Hint(err) == "" || !strings.Contains(err.Error(), "stopped answering") {
		t.Fatalf("exec: %v", err)
	}
	if d := time.Since(start); d < 500*time.Millisecond || d > 3*time.Second {
		t.Fatalf("exec gave up after %s, want timeout+grace (500ms)", d)
	}

	start = time.Now()
	_, err = c.ReadShell(context.Background(), "abc", ShellReadRequest{WaitMS: 400})
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("read: %v", err)
	}
	if d := time.Since(start); d < 700*time.Millisecond || d > 3*time.Second {
		t.Fatalf("read gave up after %s, want wait+grace (700ms)", d)
	}

	// The caller's own cancellation stays a cancellation.
	cctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = c.Exec(cctx, ExecRequest{Argv: []string{"x"}, TimeoutMS: 10_000}, nil)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("caller deadline: %v", err)
	}
}

func ExampleDecodeExecStream() {
	stream := `{"type":"stdout","data":"aGVsbG8K"}` + "\n" + `{"type":"exit","result":{"exit_code":0}}` + "\n"
	res, err := DecodeExecStream(strings.NewReader(stream), 3, nil)
	fmt.Printf("%q %v %v\n", res.Stdout, res.StdoutTruncated, err)
	// Output: "he\n[... 3 bytes elided ...]\n\n" true <nil>
}

// On a direct yamux session (pyro run talks to its guest without a
// supervisor) a call's deadline must end a read that waits on a guest that
// never answers, too.
func TestDeadlineEndsBlockedStreamRead(t *testing.T) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathExec, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-hang // a stopped guest: it neither answers nor sees the FIN
	})
	c, _ := fakeAgent(t, mux)
	defer func(g time.Duration) { execGrace = g }(execGrace)
	execGrace = 200 * time.Millisecond
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), ExecRequest{Argv: []string{"x"}, TimeoutMS: 100}, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("got %v", err)
		}
		t.Logf("gave up after %s", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("exec still blocked 5 s after its deadline")
	}
}

// A guest that trickles a byte now and then holds a pull no longer than
// one transfer window: a trickle is as good as silence.
func TestPullTrickleFails(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathFilesPull, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderKind, KindFile)
		w.WriteHeader(http.StatusOK)
		for {
			if _, err := w.Write([]byte{0}); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	c, _ := fakeAgent(t, mux)
	defer func(d time.Duration) { transferWindow = d }(transferWindow)
	transferWindow = 300 * time.Millisecond
	start := time.Now()
	body, _, err := c.PullTar(ctx(t), "/workspace/x", "/workspace")
	if err == nil {
		defer body.Close()
		_, err = io.Copy(io.Discard, body)
	}
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("trickled pull: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("trickled pull took %s", d)
	}
}

// Shell ids come from the model and become request path parts: one the
// agent never hands out is refused before anything reaches the guest.
func TestShellIDsChecked(t *testing.T) {
	reached := false
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { reached = true; http.NotFound(w, r) })
	c, _ := fakeAgent(t, mux)
	for _, id := range []string{"..", ".", "", "a/b", "../shells", "x\x00"} {
		if _, err := c.ReadShell(ctx(t), id, ShellReadRequest{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("read %q: %v", id, err)
		}
		if err := c.CloseShell(ctx(t), id); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("close %q: %v", id, err)
		}
	}
	if reached {
		t.Fatal("a bad shell id reached the agent")
	}
}

// TestHeadTailKeepsBothEnds: a capped stream keeps its first and last
// bytes with a marked middle, whatever the chunking.
func TestHeadTailKeepsBothEnds(t *testing.T) {
	var in bytes.Buffer
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&in, "line %04d\n", i)
	}
	for _, chunk := range []int{1, 7, 100, 4096, 1 << 20} {
		h := NewHeadTail(200)
		b := in.Bytes()
		for len(b) > 0 {
			n := min(chunk, len(b))
			h.Add(b[:n])
			b = b[n:]
		}
		got := string(h.Bytes())
		want := in.String()[:100] + ElisionMarker(int64(in.Len()-200)) + "\n" + in.String()[in.Len()-100:]
		if got != want {
			t.Fatalf("chunks of %d:\n%q\nwant\n%q", chunk, got, want)
		}
	}
	h := NewHeadTail(200)
	h.Add([]byte("short\n"))
	if string(h.Bytes()) != "short\n" || h.Elided() != 0 {
		t.Errorf("under the cap: %q", h.Bytes())
	}
}

// TestExecElidedTail: the agent's elided event and tail end up after the
// head with the marker; a live listener sees the marker and the tail.
func TestExecElidedTail(t *testing.T) {
	ev := func(typ, data string) string {
		return `{"type":"` + typ + `","data":"` + base64.StdEncoding.EncodeToString([]byte(data)) + `"}` + "\n"
	}
	stream := ev("stdout", "start\n") + ev("stdout", "more\n") + `{"type":"elided","stream":"stdout","elided":5000}` + "\n" +
		ev("stdout", "error: boom\n") + `{"type":"exit","result":{"exit_code":1}}` + "\n"
	var live strings.Builder
	res, err := DecodeExecStream(strings.NewReader(stream), 40, func(s string, p []byte) { live.Write(p) })
	if err != nil {
		t.Fatal(err)
	}
	want := "start\nmore\n[... 5000 bytes elided ...]\nerror: boom\n"
	if res.Stdout != want || !res.StdoutTruncated {
		t.Errorf("stdout %q, want %q", res.Stdout, want)
	}
	if !strings.Contains(live.String(), "[... 5000 bytes elided ...]") || !strings.HasSuffix(live.String(), "error: boom\n") {
		t.Errorf("live %q", live.String())
	}
}

// A guest that never answers a push through the transfer disk holds the
// call no longer than the whole disk takes at PushDiskFullRate, whatever
// the push's length says; a length the disk cannot hold is refused before
// anything reaches the guest.
func TestPushDiskBoundedByDisk(t *testing.T) {
	var reached atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathFilesPushDisk, func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		<-r.Context().Done()
	})
	c, _ := fakeAgent(t, mux)
	defer func(d time.Duration) { transferWindow = d }(transferWindow)
	transferWindow = 100 * time.Millisecond
	const disk = 2 * PushDiskFullRate // 2 s at the full-disk rate, 16 s at the floor
	start := time.Now()
	_, err := c.PushDisk(ctx(t), "/workspace", "/workspace", disk, disk)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("push to a hung guest: %v", err)
	}
	if d := time.Since(start); d < 2*time.Second || d > 6*time.Second {
		t.Fatalf("push to a hung guest took %s, want the disk's 2 s and the window", d)
	}
	for _, length := range []int64{0, -512, disk + 512, 1 << 62} {
		if _, err := c.PushDisk(ctx(t), "/workspace", "/workspace", length, disk); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("length %d on a %d-byte disk: %v", length, disk, err)
		}
	}
	if n := reached.Load(); n != 1 {
		t.Fatalf("the guest was asked %d times, want once", n)
	}
}
