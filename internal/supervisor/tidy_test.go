package supervisor

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// TestTidyRoute: a tidy request is answered at once and the tidy runs
// after, in the background, one at a time, with the caller's caps; a
// request while one runs gets one more pass (not one per request), which
// asks for the guest's quiet report if any of those requests did; a stop
// cancels the one under way; without Tidy the route says so (404), and
// the caller tidies itself.
func TestTidyRoute(t *testing.T) {
	s := &server{dir: vmdir.Dir(t.TempDir()), log: slog.New(slog.DiscardHandler), stop: make(chan struct{}), booted: make(chan struct{})}
	srv := httptest.NewServer(s.routes())
	defer srv.Close()
	post := func(body string) int {
		t.Helper()
		resp, err := http.Post(srv.URL+PathTidy, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	old := Tidy
	defer func() { Tidy = old }()
	Tidy = nil
	if code := post(`{}`); code != http.StatusNotFound {
		t.Fatalf("without Tidy: http %d", code)
	}

	var mu sync.Mutex
	var got []TidyRequest
	running, most := 0, 0
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	Tidy = func(ctx context.Context, _ vmdir.Dir, _ instance.Record, req TidyRequest, _ *agentapi.Client, _ *slog.Logger) {
		mu.Lock()
		running++
		most = max(most, running)
		got = append(got, req)
		mu.Unlock()
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		mu.Lock()
		running--
		mu.Unlock()
	}
	if code := post(`{"max_count":3,"max_bytes":100}`); code != http.StatusAccepted {
		t.Fatalf("tidy: http %d", code)
	}
	<-started // answered before the tidy ended: it is still blocked
	for i := range 3 {
		body := `{"max_count":4}`
		if i == 0 {
			body = `{"max_count":4,"quiet":true}` // kept by the later ones
		}
		if code := post(body); code != http.StatusAccepted {
			t.Fatalf("tidy while one runs: http %d", code)
		}
	}
	release <- struct{}{}
	<-started
	release <- struct{}{}
	s.waitTidy(5 * time.Second)
	mu.Lock()
	if len(got) != 2 || most != 1 || got[0] != (TidyRequest{MaxCount: 3, MaxBytes: 100}) || got[1].MaxCount != 4 || !got[1].Quiet {
		t.Fatalf("passes %+v, at most %d at once", got, most)
	}
	mu.Unlock()

	// A stop cancels the tidy under way.
	post(`{}`)
	<-started
	s.requestStop(instance.Stopped, instance.CauseRequested, "test")
	ended := make(chan struct{})
	go func() { s.waitTidy(time.Minute); close(ended) }()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("a stop left the tidy running")
	}
}
