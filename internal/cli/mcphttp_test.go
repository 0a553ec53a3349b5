package cli

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serveWith serves h through newHTTPServer and readBody with short deadlines.
func serveWith(t *testing.T, h http.Handler) string {
	t.Helper()
	oldH, oldB := headerTimeout, bodyTimeout
	headerTimeout, bodyTimeout = 300*time.Millisecond, 300*time.Millisecond
	t.Cleanup(func() { headerTimeout, bodyTimeout = oldH, oldB })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPServer(readBody(h))
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestMCPHTTPSlowBodyCut: a client that sends its headers and then
// trickles nothing of its body loses the connection after the body
// deadline instead of holding it forever.
func TestMCPHTTPSlowBodyCut(t *testing.T) {
	addr := serveWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	for _, partial := range []string{
		"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"", // stalled body
		"POST /mcp HTTP/1.1\r\nHost: x\r\n",                                        // stalled headers
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, partial)
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(c)
		c.Close()
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%q: the server still held the connection after 5 s", partial)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%q: cut after %s, want about the deadline", partial, d)
		}
	}
}

// TestMCPHTTPLongStreamSurvives: once the body is in, a response may
// stream for longer than every read deadline (a long tool call's SSE
// stream), and its request context stays alive.
func TestMCPHTTPLongStreamSurvives(t *testing.T) {
	addr := serveWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 6; i++ {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			fmt.Fprintf(w, "data: %d\n\n", i)
			http.NewResponseController(w).Flush()
		}
		fmt.Fprint(w, "data: end\n\n")
	}))
	resp, err := http.Post("http://"+addr+"/mcp", "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if sc.Text() != "" {
			lines = append(lines, sc.Text())
		}
	}
	if len(lines) == 0 || lines[len(lines)-1] != "data: end" {
		t.Fatalf("the stream was cut: %q", lines)
	}
}

// TestMCPHTTPNoBodyWithoutToken: a client without the token gets its 401
// before the server reads (and buffers) anything of its body, so
// unauthenticated clients cannot make the server hold request bodies.
func TestMCPHTTPNoBodyWithoutToken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPServer(requireBearer("tok", readBody(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the handler ran without the token")
	}))))
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A body announced at 4 MiB of which nothing arrives.
	fmt.Fprint(c, "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n{")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.Contains(line, "401") {
		t.Fatalf("got %q, %v; want a prompt 401", line, err)
	}
}
