package supervisor

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// spliced returns an agent client whose calls go through spliceAgent to
// handler, served as the guest agent over yamux on a pipe.
func spliced(t *testing.T, handler http.Handler) *agentapi.Client {
	t.Helper()
	agent := agentapi.NewClient(func(context.Context) (net.Conn, error) {
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
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(AgentPrefix+"/", func(w http.ResponseWriter, r *http.Request) { spliceAgent(w, r, agent) })
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); agent.Close() })
	return agentapi.NewProxiedClient(func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}, AgentPrefix)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The exec stream crosses the supervisor byte for byte: the client sees
// the events as the agent wrote them, streamed before the exit.
func TestSpliceExecStream(t *testing.T) {
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+agentapi.PathExec, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Connection") != "close" && !r.Close {
			t.Error("the agent must be told to close the stream after its reply")
		}
		_, _ = io.WriteString(w, `{"type":"stdout","data":"aGk="}`+"\n")
		w.(http.Flusher).Flush()
		<-release // the client must see the event before the exit
		_, _ = io.WriteString(w, `{"type":"exit","result":{"exit_code":7}}`+"\n")
	})
	c := spliced(t, mux)
	res, err := c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"x"}}, func(_ string, p []byte) {
		if string(p) == "hi" {
			close(release)
		}
	})
	if err != nil || res.ExitCode != 7 || res.Stdout != "hi" {
		t.Fatalf("%+v %v", res, err)
	}
	// Several calls, one connection each, in a row.
	for i := 0; i < 3; i++ {
		if _, err := c.Exec(testCtx(t), agentapi.ExecRequest{Argv: []string{"x"}}, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// Request bodies (a streamed, chunked push), queries and error replies
// pass through unchanged.
func TestSpliceBodiesAndErrors(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+agentapi.PathFilesPush, func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if r.URL.Query().Get("dest") != "/workspace/a b" {
			agentapi.WriteError(w, errdefs.New(errdefs.ErrInvalidArgument, "", "dest %q", r.URL.Query().Get("dest")))
			return
		}
		_, _ = io.WriteString(w, `{"bytes":`+strconv.FormatInt(n, 10)+`,"dest":"/workspace/a b"}`)
	})
	mux.HandleFunc("GET "+agentapi.PathServices+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		agentapi.WriteError(w, errdefs.New(errdefs.ErrNotFound, "list services", "no service %q", r.PathValue("name")))
	})
	c := spliced(t, mux)
	body := strings.NewReader(strings.Repeat("z", 3<<20))
	res, err := c.PushTar(testCtx(t), "/workspace/a b", "", io.MultiReader(body)) // unknown length: chunked
	if err != nil || res.Bytes != 3<<20 {
		t.Fatalf("%+v %v", res, err)
	}
	_, err = c.ServiceStatus(testCtx(t), "web")
	if !errors.Is(err, errdefs.ErrNotFound) || errdefs.Hint(err) != "list services" {
		t.Fatalf("got %v", err)
	}
}

// A client that leaves closes the agent stream, so the agent sees the
// request end (and kills the command).
func TestSpliceClientGone(t *testing.T) {
	gone := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+agentapi.PathExec, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // as the agent does; then the server watches the stream
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(gone)
	})
	c := spliced(t, mux)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"x"}}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the agent never saw the client leave")
	}
}
