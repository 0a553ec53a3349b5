package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// streamOpener opens a raw stream to the guest agent (agentapi.Client's
// OpenStream).
type streamOpener interface {
	OpenStream(ctx context.Context) (net.Conn, error)
}

// agentOpenTimeout bounds opening a stream to the agent; the caller's own
// deadlines bound the rest of the call.
const agentOpenTimeout = 10 * time.Second

// spliceAgent serves one request under AgentPrefix by splicing: it opens a
// new agent stream, sends the request head there (path without the
// prefix, "Connection: close"), then copies bytes both ways until either
// side ends. Nothing of the guest's reply is parsed or re-encoded here: the
// exec stream and pulled tars cross the supervisor as they came, and the
// client (agentapi) bounds them. One client connection carries one call.
func spliceAgent(w http.ResponseWriter, r *http.Request, agent streamOpener) {
	path := strings.TrimPrefix(r.URL.Path, AgentPrefix)
	if !strings.HasPrefix(path, "/") {
		writeError(w, errdefs.New(errdefs.ErrInvalidArgument, "", "bad agent path %q", r.URL.Path))
		return
	}
	head, err := requestHead(r, path)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), agentOpenTimeout)
	stream, err := agent.OpenStream(ctx)
	cancel()
	if err != nil {
		writeError(w, errdefs.Wrap(errdefs.ErrUnavailable, err, "check the VM with `pyro vm status`", "guest agent unreachable"))
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		_ = stream.Close()
		writeError(w, errdefs.Wrap(errdefs.ErrUnavailable, err, "", "splice agent stream"))
		return
	}
	// The server's header read deadline must not cut a long exec.
	_ = conn.SetDeadline(time.Time{})
	splice(conn, brw.Reader, stream, head)
}

// splice sends head to stream, then copies client (with what the server
// had already buffered) to stream and stream to client until either
// direction ends; then both are closed, so the agent sees a client that
// left (and kills its command) and the client sees the reply's end.
func splice(client net.Conn, buffered *bufio.Reader, stream net.Conn, head []byte) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			_ = stream.Close()
			_ = client.Close()
		})
	}
	defer closeBoth()
	if _, err := stream.Write(head); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(stream, buffered)
		closeBoth()
	}()
	_, _ = io.Copy(client, stream)
	closeBoth()
	<-done
}

// hopHeaders are per-connection headers not passed on (RFC 9110 7.6.1);
// the body framing is written from the parsed request instead.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length"}

// requestHead is the HTTP/1.1 request head sent to the agent: same method,
// path without the prefix, query and headers, the body framing the client
// used (its body bytes follow unchanged), and Connection: close so the
// agent ends the stream after its reply.
func requestHead(r *http.Request, path string) ([]byte, error) {
	if r.ProtoMajor != 1 {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "", "agent calls need HTTP/1.x, got %s", r.Proto)
	}
	target := path
	if r.URL.RawQuery != "" {
		target += "?" + r.URL.RawQuery
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: pyro-agent\r\n", r.Method, target)
	h := r.Header.Clone()
	for _, k := range hopHeaders {
		h.Del(k)
	}
	if err := h.Write(&b); err != nil {
		return nil, err
	}
	switch {
	case len(r.TransferEncoding) > 0:
		if len(r.TransferEncoding) != 1 || r.TransferEncoding[0] != "chunked" {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "", "unsupported transfer encoding %q", r.TransferEncoding)
		}
		b.WriteString("Transfer-Encoding: chunked\r\n")
	case r.ContentLength > 0:
		b.WriteString("Content-Length: " + strconv.FormatInt(r.ContentLength, 10) + "\r\n")
	}
	b.WriteString("Connection: close\r\n\r\n")
	return b.Bytes(), nil
}

var _ streamOpener = (*agentapi.Client)(nil)
