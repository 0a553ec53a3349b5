package supervisor

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/unixsock"
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

// TestTidyAfterAnswer: the tidy starts only once the caller has read its
// answer and closed the connection (not beside the answer, on the
// caller's path); the answer says Connection: close, so an HTTP client
// lets go at once.
func TestTidyAfterAnswer(t *testing.T) {
	s := &server{dir: vmdir.Dir(t.TempDir()), log: slog.New(slog.DiscardHandler), stop: make(chan struct{}), booted: make(chan struct{})}
	srv := httptest.NewServer(s.routes())
	defer srv.Close()
	oldTidy, oldWait := Tidy, callerGoneWait
	defer func() { Tidy, callerGoneWait = oldTidy, oldWait }()
	callerGoneWait = time.Minute
	started := make(chan struct{}, 1)
	Tidy = func(context.Context, vmdir.Dir, instance.Record, TidyRequest, *agentapi.Client, *slog.Logger) {
		started <- struct{}{}
	}
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"max_count":3}`
	if _, err := fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", PathTidy, len(body), body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !resp.Close {
		t.Fatalf("answer: http %d, close %v", resp.StatusCode, resp.Close)
	}
	select {
	case <-started:
		t.Fatal("the tidy started while the caller still held its answer's connection")
	case <-time.After(200 * time.Millisecond):
	}
	conn.Close()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the tidy did not start once the caller let go")
	}
	s.waitTidy(5 * time.Second)

	// Through the supervisor's own client, which reads the answer to its
	// end: answered, then tidied (no wait for a close that only comes
	// after the answer).
	dir := vmdir.Dir(t.TempDir())
	ln, err := unixsock.Listen(dir.Path(vmdir.SupervisorSock))
	if err != nil {
		t.Fatal(err)
	}
	usrv := &http.Server{Handler: s.routes()}
	go func() { _ = usrv.Serve(ln) }()
	defer usrv.Close()
	c := NewClient(dir)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Tidy(ctx, TidyRequest{MaxCount: 3}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("no tidy after the client's request")
	}
	s.waitTidy(5 * time.Second)
}
