package cli

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/mcpserver"
)

// tokenEnv names the environment variable holding the HTTP bearer token.
const tokenEnv = "PYRO_MCP_TOKEN"

func (a *app) mcpCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "Serve pyro's tools to MCP clients (Claude Desktop, Cursor, agent frameworks)",
	}
	cmd.AddCommand(a.mcpServeCommand())
	return cmd
}

func (a *app) mcpServeCommand() *cobra.Command {
	var httpAddr string
	var allowRemote bool
	cmd := &cobra.Command{
		Use:   "serve [--http ADDR [--allow-remote]]",
		Short: "Run the MCP server on stdio, or on streamable HTTP with --http",
		Long: `Runs pyro's MCP server: vm_run for one-off commands, the vm_* lifecycle
tools and the workspace, snapshot, service and shell tools.

By default it speaks MCP on stdin/stdout (stdout carries only the protocol).
With --http ADDR it serves the streamable HTTP transport at http://ADDR/mcp
instead. ADDR must be a loopback address (":PORT" means 127.0.0.1:PORT) unless
--allow-remote is given. Every HTTP request needs "Authorization: Bearer TOKEN";
the token is $` + tokenEnv + `, or a random one printed once on stderr.`,
		Example: `  pyro mcp serve
  pyro mcp serve --http 127.0.0.1:8765
  PYRO_MCP_TOKEN=secret pyro mcp serve --http :8765

  Claude Desktop (claude_desktop_config.json):
  {"mcpServers": {"pyro": {"command": "pyro", "args": ["mcp", "serve"]}}}`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.sdk
			server, err := mcpserver.New(c, mcpserver.Options{Version: version()})
			if err != nil {
				return err
			}
			if httpAddr == "" {
				if allowRemote {
					return usageError(cmd, "--allow-remote needs --http ADDR")
				}
				err := server.Run(cmd.Context(), &mcp.StdioTransport{})
				if err != nil && cmd.Context().Err() == nil && !isClosedPipe(err) {
					return errdefs.Wrap(errdefs.ErrUnavailable, err, "", "mcp server")
				}
				return nil
			}
			return a.serveHTTP(cmd.Context(), server, httpAddr, allowRemote)
		},
	}
	f := cmd.Flags()
	f.StringVar(&httpAddr, "http", "", `serve streamable HTTP on ADDR (host:port; ":port" means 127.0.0.1) instead of stdio`)
	f.BoolVar(&allowRemote, "allow-remote", false, "allow --http on a non-loopback address (the bearer token is still required)")
	return cmd
}

// isClosedPipe reports the normal end of a stdio session.
func isClosedPipe(err error) bool {
	return errors.Is(err, mcp.ErrConnectionClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) ||
		strings.Contains(err.Error(), "EOF")
}

// serveHTTP serves server on addr until ctx ends.
func (a *app) serveHTTP(ctx context.Context, server *mcp.Server, addr string, allowRemote bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errdefs.Wrap(errdefs.ErrInvalidArgument, err, "use host:port, e.g. 127.0.0.1:8765", "bad --http address %q", addr)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	if !isLoopback(host) && !allowRemote {
		return errdefs.New(errdefs.ErrInvalidArgument, "bind 127.0.0.1, or pass --allow-remote to expose pyro's tools to the network",
			"refusing to serve MCP on non-loopback address %q", host)
	}
	token := os.Getenv(tokenEnv)
	generated := token == ""
	if generated {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		token = hex.EncodeToString(b)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "pick another port", "cannot listen on %s", addr)
	}
	handler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)
	srv := &http.Server{Handler: requireBearer(token, handler), ReadHeaderTimeout: 10 * time.Second}
	url := "http://" + ln.Addr().String() + "/mcp"
	if generated {
		fmt.Fprintf(a.stderr, "pyro: MCP server listening on %s\npyro: bearer token (shown once; set %s to choose it): %s\n", url, tokenEnv, token)
	} else {
		fmt.Fprintf(a.stderr, "pyro: MCP server listening on %s (bearer token from %s)\n", url, tokenEnv)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "", "mcp http server")
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	return nil
}

// requireBearer answers 401 to any request without the exact bearer token,
// before the MCP handler sees it.
func requireBearer(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pyro"`)
			http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
