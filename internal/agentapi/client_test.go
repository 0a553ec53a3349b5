package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// fakeAgent serves handler over a yamux server session per dial.
func fakeAgent(t *testing.T, handler http.Handler) (*Client, *atomic.Int32) {
	t.Helper()
	var dials atomic.Int32
	c := NewClient(func(context.Context) (net.Conn, error) {
		dials.Add(1)
		host, guest := net.Pipe()
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = io.Discard
		sess, err := yamux.Server(guest, cfg)
		if err != nil {
			return nil, err
		}
		go func() { _ = (&http.Server{Handler: handler}).Serve(sess) }()
		return host, nil
	})
	t.Cleanup(func() { c.Close() })
	return c, &dials
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestErrorCategories(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathExec, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":"no command","category":"invalid_argument"}`)
	})
	mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	c, _ := fakeAgent(t, mux)
	_, err := c.Exec(ctx(t), ExecRequest{}, nil)
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("exec: got %v", err)
	}
	_, err = c.Health(ctx(t))
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("health: got %v", err)
	}
}

func TestExecStreamEnds(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathExec, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"type":"stdout","data":"aGk="}`+"\n")
	})
	c, _ := fakeAgent(t, mux)
	var got string
	_, err := c.Exec(ctx(t), ExecRequest{Argv: []string{"x"}}, func(_ string, p []byte) { got += string(p) })
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("got %v", err)
	}
	if got != "hi" {
		t.Errorf("streamed %q", got)
	}
}

func TestRedialAfterSessionLoss(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"agent_version":"v","vcpus":2}`)
	})
	c, dials := fakeAgent(t, mux)
	h, err := c.Health(ctx(t))
	if err != nil || h.VCPUs != 2 {
		t.Fatalf("%+v %v", h, err)
	}
	// Kill the session under the client.
	c.mu.Lock()
	_ = c.conn.Close()
	c.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err = c.Health(ctx(t))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %v", err)
		}
	}
	if dials.Load() < 2 {
		t.Fatalf("dials = %d", dials.Load())
	}
	c.Close()
	if _, err := c.Health(ctx(t)); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("after close: %v", err)
	}
}

// An error crosses the wire with its category, message and hint apart, and
// a reply without a readable body still maps by its status.
func TestErrorRoundTrip(t *testing.T) {
	for _, cat := range errdefs.Categories() {
		orig := errdefs.New(cat, "do this", "it failed")
		mux := http.NewServeMux()
		mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, r *http.Request) { WriteError(w, orig) })
		c, _ := fakeAgent(t, mux)
		_, err := c.Health(ctx(t))
		if !errors.Is(err, cat) || errdefs.Hint(err) != "do this" || errdefs.Message(err) != "it failed" {
			t.Errorf("%v: got %v", cat, err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "gone", http.StatusNotFound)
	})
	c, _ := fakeAgent(t, mux)
	if _, err := c.Health(ctx(t)); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("status fallback: %v", err)
	}
}

// A restored guest that answers its identity call after CallTimeout is
// slow, not dead: SetIdentityWithin waits the caller's bound (a restore
// waits as long as a boot), SetIdentity only CallTimeout.
func TestSetIdentityWithinOutlastsCallTimeout(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathIdentity, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(600 * time.Millisecond)
		_ = json.NewEncoder(w).Encode(IdentityResponse{Hostname: "pyro-slow"})
	})
	c, _ := fakeAgent(t, mux)
	defer func(d time.Duration) { callTimeout = d }(callTimeout)
	callTimeout = 200 * time.Millisecond
	if _, err := c.SetIdentity(ctx(t), IdentityRequest{}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("SetIdentity past CallTimeout: %v", err)
	}
	r, err := c.SetIdentityWithin(ctx(t), 5*time.Second, IdentityRequest{})
	if err != nil || r.Hostname != "pyro-slow" {
		t.Fatalf("SetIdentityWithin: %+v %v", r, err)
	}
}
