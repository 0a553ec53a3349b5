package cli

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
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

	"github.com/pyro-mcp/pyro"
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
	var o serveOptions
	var netMax string     // --network-policy-max
	var hostsMax []string // --allow-host-max
	var allowPull bool    // --allow-pull
	var poolSize int      // --pool
	var poolEnv string    // --pool-environment
	var poolWS int        // --pool-workspace
	cmd := &cobra.Command{
		Use:   "serve [--profile vm-run|workspace-core|workspace-full] [--allow-path DIR]... [--allow-host-compat] [--http ADDR [--tls-cert FILE --tls-key FILE] [--allow-remote] [--allow-origin ORIGIN]...]",
		Short: "Run the MCP server on stdio, or on streamable HTTP with --http",
		Long: `Runs pyro's MCP server: vm_run for one-off commands, the vm_* lifecycle
tools and the workspace, snapshot, service and shell tools.

By default it speaks MCP on stdin/stdout (stdout carries only the protocol).
With --http ADDR it serves the streamable HTTP transport at http://ADDR/mcp
instead. ADDR must be a loopback address (":PORT" means 127.0.0.1:PORT) unless
--allow-remote is given, which also needs --tls-cert and --tls-key (the server
then speaks HTTPS; the certificate files may also be used on loopback). Every
HTTP request needs "Authorization: Bearer TOKEN"; the token is $` + tokenEnv + `,
or a random one printed once on stderr. A request carrying a browser Origin is
refused (403) unless the Origin is the bound address or an --allow-origin entry.

The model is untrusted. Host paths in tool arguments (seed_path, source_path,
a secret's file_path, output_path) must lie beneath the client's MCP roots (not
with --allow-remote: a remote client's roots are its own files) or a --allow-path
directory (default: the current directory, unless it is / or your home
directory); /proc, /sys and /dev never count. A tool call's allow_host_compat=true takes effect only with
--allow-host-compat.

--network-policy-max and --allow-host-max pin what a tool call may ask for: a
request may only narrow them (a mode no wider, and with a maximum allowlist only
entries it covers); wider requests are refused with invalid_argument. Without
them a tool call may ask for egress with any allowlist, but never one that opens
loopback, private or link-local ranges or this host's addresses.

--profile chooses the tools: vm-run (vm_run only), workspace-core (workspace
create, list, status, exec, file ops, patch, diff, summary, reset, export and
delete, without secrets, network, shells, services, snapshots or disk fields)
or workspace-full (the contract's tools and every later one). Without
--profile the server lists exactly the contract's 32 tools.

--project-path DIR (default: the git checkout the server is started in, if any;
"" for none) makes workspace_create without seed_path fill /workspace with that
checkout's git-tracked files (no .git, nothing ignored or untracked; symlinks are
copied as links, never followed out of the checkout).`,
		Example: `  pyro mcp serve
  pyro mcp serve --http 127.0.0.1:8765
  PYRO_MCP_TOKEN=secret pyro mcp serve --http :8765
  pyro mcp serve --allow-path ~/src/project --allow-path /tmp/exports
  pyro mcp serve --http 0.0.0.0:8765 --allow-remote --tls-cert cert.pem --tls-key key.pem
  pyro mcp serve --http :8765 --allow-origin https://app.example.com
  pyro mcp serve --allow-host-compat
  pyro mcp serve --allow-pull
  pyro mcp serve --network-policy-max egress --allow-host-max @pypi --allow-host-max '*.github.com:443'
  pyro mcp serve --profile workspace-full
  pyro mcp serve --pool 2                  # vm_run gets restored guests in milliseconds
  pyro mcp serve --pool-workspace 2        # so does workspace_create (unseeded)

  Claude Desktop (claude_desktop_config.json):
  {"mcpServers": {"pyro": {"command": "pyro", "args": ["mcp", "serve"]}}}`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.httpAddr == "" && (o.allowRemote || o.tlsCert != "" || o.tlsKey != "" || len(o.allowOrigins) > 0 || cmd.Flags().Changed("session-timeout")) {
				return usageError(cmd, "--allow-remote, --allow-origin, --session-timeout, --tls-cert and --tls-key need --http ADDR")
			}
			if o.sessionTimeout < 0 {
				return usageError(cmd, "--session-timeout must not be negative (0 keeps idle sessions)")
			}
			if o.sessionTimeout == 0 {
				o.sessionTimeout = -1 // HTTPOptions: negative keeps idle sessions forever
			}
			if (o.tlsCert == "") != (o.tlsKey == "") {
				return usageError(cmd, "give --tls-cert and --tls-key together")
			}
			if o.allowRemote && o.tlsCert == "" {
				return errdefs.New(errdefs.ErrInvalidArgument, "pass --tls-cert FILE --tls-key FILE: the bearer token must not cross a network in clear text",
					"refusing --allow-remote without TLS")
			}
			profile, err := mcpserver.ParseProfile(o.profile)
			if err != nil {
				return err
			}
			projectPath, err := serveProject(cmd.Context(), cmd.Flags().Changed("project-path"), o.projectPath)
			if err != nil {
				return err
			}
			// A remote client's roots name its own files, not this host's.
			a.sdk.SetImagePulls(pyro.ImagePullsNone)
			if allowPull {
				a.sdk.SetImagePulls(pyro.ImagePullsRegistryOnly)
			}
			server, err := mcpserver.New(a.sdk, mcpserver.Options{Version: version(), AllowPaths: o.allowPaths, AllowHostCompat: o.allowHostCompat,
				IgnoreClientRoots: o.allowRemote, Profile: profile, NetworkPolicyMax: netMax, AllowHostsMax: hostsMax,
				ProjectPath: projectPath})
			if err != nil {
				return err
			}
			defer a.servePool(cmd.Context(), poolSize, poolEnv)() // mcp_pool.go
			defer a.serveWorkspacePool(cmd.Context(), poolWS, poolEnv)()
			if o.httpAddr == "" {
				err := server.Run(cmd.Context(), &mcpserver.StdioTransport{})
				if err != nil && cmd.Context().Err() == nil && !isClosedPipe(err) {
					return errdefs.Wrap(errdefs.ErrUnavailable, err, "", "mcp server")
				}
				return nil
			}
			return a.serveHTTP(cmd.Context(), server, o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&allowPull, "allow-pull", false, "let a tool call's environment name an OCI image that is not cached yet, which the host then pulls from its registry (default: only cached images and the catalog; host archives never)")
	f.StringVar(&o.httpAddr, "http", "", `serve streamable HTTP on ADDR (host:port; ":port" means 127.0.0.1) instead of stdio`)
	f.BoolVar(&o.allowRemote, "allow-remote", false, "allow --http on a non-loopback address (needs --tls-cert/--tls-key; the bearer token is still required)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "serve HTTPS with this PEM certificate (chain) file")
	f.StringVar(&o.tlsKey, "tls-key", "", "the PEM private key of --tls-cert")
	f.StringArrayVar(&o.allowPaths, "allow-path", nil, "host directory beneath which tool arguments may name host paths (repeatable; default: the current directory unless it is / or your home)")
	f.StringArrayVar(&o.allowOrigins, "allow-origin", nil, "with --http, also serve browser requests whose Origin is this (scheme://host[:port]; repeatable; default: only the bound address)")
	f.DurationVar(&o.sessionTimeout, "session-timeout", mcpserver.DefaultSessionTimeout, "with --http, close a session after this long without a request (0: never); its workspaces stay")
	f.BoolVar(&o.allowHostCompat, "allow-host-compat", false, "let a tool call's allow_host_compat=true fall back to the weaker host sandbox")
	f.StringVar(&netMax, "network-policy-max", "", "the widest network policy a tool call may ask for: off, egress (default) or egress+published-ports")
	f.StringArrayVar(&hostsMax, "allow-host-max", nil, "pin tool calls' allow_hosts inside this allowlist entry (NAME, *.SUFFIX or CIDR[:PORT], or a preset; repeatable)")
	f.StringVar(&o.projectPath, "project-path", "", "seed workspace_create without seed_path from this git checkout's tracked files (default: the checkout the server starts in, if any; \"\" for none)")
	f.IntVar(&poolSize, "pool", 0, "keep this many restored, paused guests of vm_run's default configuration (--pool-environment, 1 vCPU, 1024 MiB, no network) ready while serving (0: none)")
	f.StringVar(&poolEnv, "pool-environment", pyro.DefaultEnvironment, "the environment of --pool's guests and --pool-workspace's workspaces")
	f.IntVar(&poolWS, "pool-workspace", 0, "keep this many workspaces of workspace_create's default configuration (--pool-environment, 1 vCPU, 1024 MiB, unseeded, no network) ready while serving (0: none)")
	f.StringVar(&o.profile, "profile", "", "serve a tool profile: vm-run (vm_run only), workspace-core (workspace basics, narrow schemas) or workspace-full (every tool); default: exactly the contract's 32 tools")
	return cmd
}

// serveOptions are the flags of `mcp serve`.
type serveOptions struct {
	httpAddr        string
	allowRemote     bool
	tlsCert, tlsKey string
	allowPaths      []string
	allowHostCompat bool
	allowOrigins    []string
	profile         string
	projectPath     string
	sessionTimeout  time.Duration
}

// isClosedPipe reports the normal end of a stdio session.
func isClosedPipe(err error) bool {
	return errors.Is(err, mcp.ErrConnectionClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) ||
		strings.Contains(err.Error(), "EOF")
}

// serveHTTP serves server on o.httpAddr until ctx ends.
func (a *app) serveHTTP(ctx context.Context, server *mcp.Server, o serveOptions) error {
	addr := o.httpAddr
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errdefs.Wrap(errdefs.ErrInvalidArgument, err, "use host:port, e.g. 127.0.0.1:8765", "bad --http address %q", addr)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	if !isLoopback(host) && !o.allowRemote {
		return errdefs.New(errdefs.ErrInvalidArgument, "bind 127.0.0.1, or pass --allow-remote to expose pyro's tools to the network",
			"refusing to serve MCP on non-loopback address %q", host)
	}
	var tlsConfig *tls.Config
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return errdefs.Wrap(errdefs.ErrInvalidArgument, err, "give a PEM certificate and its PEM private key", "cannot load --tls-cert/--tls-key")
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
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
	guard, err := newOriginGuard(ln.Addr().String(), o.allowOrigins)
	if err != nil {
		ln.Close()
		return err
	}
	handler := mcpserver.HTTPHandler(server, mcpserver.HTTPOptions{SessionTimeout: o.sessionTimeout})
	srv := newHTTPServer(guard.handler(requireBearer(token, readBody(requireSession(handler)))))
	url := "http://" + ln.Addr().String() + "/mcp"
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
		url = "https://" + strings.TrimPrefix(url, "http://")
	}
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
// before the MCP handler sees it. The scheme is case-insensitive (RFC 9110
// section 11.1); the token is compared in constant time. The 401 says how to
// authenticate, since there is no OAuth to discover: clients that expect
// OAuth show this text to the user.
func requireBearer(token string, next http.Handler) http.Handler {
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, got, _ := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
		if len(want) == 0 || !strings.EqualFold(scheme, "bearer") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), want) != 1 {
			challenge := `Bearer realm="pyro"`
			if r.Header.Get("Authorization") != "" {
				challenge += `, error="invalid_token", error_description="wrong bearer token"`
			}
			w.Header().Set("WWW-Authenticate", challenge)
			http.Error(w, "unauthorized: missing or wrong bearer token (hint: send the header \"Authorization: Bearer <token>\"; "+
				"the token is the server's $"+tokenEnv+", or the random one `pyro mcp serve --http` printed on its stderr when it started; this server does not use OAuth)",
				http.StatusUnauthorized)
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
