package agentapi

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestGuestRedirectNotFollowed: a replaced guest agent answering with a
// redirect must not steer the host's client to another path of the
// socket it dials: through the supervisor that is the supervisor's own
// API (a 307 keeps the method and body, e.g. POST /v1/stop).
func TestGuestRedirectNotFollowed(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var hijacked atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/agent/", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/v1/stop", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/v1/stop", func(w http.ResponseWriter, r *http.Request) {
		hijacked.Add(1)
		w.Write([]byte(`{"status":"ok"}`))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	c := NewProxiedClient(dial, "/agent")
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c.Health(ctx)
	if n := hijacked.Load(); n != 0 {
		t.Fatalf("the host followed the guest's redirect to the supervisor's /v1/stop (%d times)", n)
	}
	if err == nil {
		t.Fatal("a redirect answered as a health reply")
	}
}

// TestShellReadLimitNotModelChosen: max_chars comes from the model, so
// the host's bound on a shell read's reply must not grow with it beyond
// what an honest agent can hold (MaxShellBufferBytes of output).
func TestShellReadLimitNotModelChosen(t *testing.T) {
	ceiling := 6*int64(MaxShellBufferBytes) + 64<<10
	for _, chars := range []int{1 << 30, 1 << 40, 1<<62 - 1} {
		if got := (outputRead{maxChars: chars, bufferBytes: MaxShellBufferBytes}).readLimit(); got > ceiling || got < MaxReplyBytes {
			t.Errorf("max_chars %d: reply limit %d, want within [%d, %d]", chars, got, MaxReplyBytes, ceiling)
		}
	}
}
