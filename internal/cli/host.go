package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

// Host onramps: register pyro's MCP server with the agent hosts people use,
// or print the configuration to paste, and check that it works. Every host
// gets the same server command: this binary, `mcp serve --profile
// workspace-full` (the whole tool set; the project is the checkout the host
// starts the server in).

// hostBinary is the pyro binary hosts are told to run (a seam for tests).
var hostBinary = os.Executable

// hostServerName is the name pyro registers under.
const hostServerName = "pyro"

// hostCLIs are the hosts with an `mcp add` command: the executable and the
// argv that registers a stdio server.
var hostCLIs = map[string]struct {
	exe  string
	add  func(server []string) []string
	list []string
}{
	"claude-code": {exe: "claude", list: []string{"mcp", "list"},
		add: func(server []string) []string { return append([]string{"mcp", "add", hostServerName, "--"}, server...) }},
	"codex": {exe: "codex", list: []string{"mcp", "list"},
		add: func(server []string) []string { return append([]string{"mcp", "add", hostServerName, "--"}, server...) }},
}

// serverArgv is the command every host runs.
func serverArgv() ([]string, error) {
	bin, err := hostBinary()
	if err != nil {
		return nil, err
	}
	return []string{bin, "mcp", "serve", "--profile", "workspace-full"}, nil
}

func (a *app) hostCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Connect pyro's MCP server to Claude Code, Codex, OpenCode, Claude Desktop or Cursor",
		Example: `  pyro host connect claude-code
  pyro host connect codex
  pyro host print-config claude-desktop
  pyro host doctor`,
	}
	cmd.AddCommand(a.hostConnect(), a.hostPrintConfig(), a.hostDoctor())
	return cmd
}

// hostConnectResult says what connect did.
type hostConnectResult struct {
	Host    string   `json:"host"`
	Command []string `json:"command"`
	Ran     bool     `json:"ran"`
	Output  string   `json:"output,omitempty"`
}

func (a *app) hostConnect() *cobra.Command {
	return &cobra.Command{
		Use:   "connect claude-code|codex",
		Short: "Register pyro's MCP server with Claude Code or Codex (runs their `mcp add`, or prints it)",
		Long: `Runs "claude mcp add pyro -- PYRO mcp serve --profile workspace-full" (or the
codex equivalent) when that tool is on PATH; otherwise prints the exact command
to run once it is installed.`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"claude-code", "codex"},
		RunE: func(cmd *cobra.Command, args []string) error {
			h, ok := hostCLIs[args[0]]
			if !ok {
				return errdefs.New(errdefs.ErrInvalidArgument, "use claude-code or codex; for other hosts see `pyro host print-config`", "unknown host %q", args[0])
			}
			server, err := serverArgv()
			if err != nil {
				return err
			}
			argv := append([]string{h.exe}, h.add(server)...)
			res := hostConnectResult{Host: args[0], Command: argv}
			path, lookErr := exec.LookPath(h.exe)
			if lookErr == nil {
				ctx, cancel := context.WithTimeout(cmd.Context(), 60*time.Second)
				defer cancel()
				c := exec.CommandContext(ctx, path, argv[1:]...)
				var out bytes.Buffer
				c.Stdout, c.Stderr = &capWriter{w: &out, n: 64 << 10}, &capWriter{w: &out, n: 64 << 10}
				runErr := c.Run()
				res.Ran, res.Output = true, out.String()
				if runErr != nil {
					return errdefs.Wrap(errdefs.ErrUnavailable, runErr, "run it yourself: "+shellJoin(argv), "%s mcp add failed: %s", h.exe, strings.TrimSpace(termtext.Clean(out.String())))
				}
			}
			return a.emit(res, func(w io.Writer) {
				if res.Ran {
					fmt.Fprintf(w, "registered pyro with %s: %s\n", args[0], shellJoin(argv))
					return
				}
				fmt.Fprintf(w, "%s is not on PATH; once it is installed, run:\n  %s\n", h.exe, shellJoin(argv))
			})
		},
	}
}

// hostConfig is the configuration file snippet of a host without an
// `mcp add` command.
func hostConfig(host string, server []string) (any, string, error) {
	switch host {
	case "claude-desktop", "cursor":
		where := "claude_desktop_config.json (Claude Desktop: Settings > Developer > Edit Config)"
		if host == "cursor" {
			where = "~/.cursor/mcp.json, or .cursor/mcp.json in a project"
		}
		return map[string]any{"mcpServers": map[string]any{hostServerName: map[string]any{"command": server[0], "args": server[1:]}}}, where, nil
	case "opencode":
		return map[string]any{"$schema": "https://opencode.ai/config.json",
			"mcp": map[string]any{hostServerName: map[string]any{"type": "local", "command": server, "enabled": true}}}, "opencode.json (project) or ~/.config/opencode/opencode.json", nil
	}
	return nil, "", errdefs.New(errdefs.ErrInvalidArgument, "use opencode, claude-desktop or cursor; for Claude Code and Codex use `pyro host connect`", "unknown host %q", host)
}

func (a *app) hostPrintConfig() *cobra.Command {
	return &cobra.Command{
		Use:       "print-config opencode|claude-desktop|cursor",
		Short:     "Print the MCP configuration to paste into OpenCode, Claude Desktop or Cursor",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"opencode", "claude-desktop", "cursor"},
		RunE: func(cmd *cobra.Command, args []string) error {
			server, err := serverArgv()
			if err != nil {
				return err
			}
			cfg, where, err := hostConfig(args[0], server)
			if err != nil {
				return err
			}
			// The snippet is JSON either way; the human form says where it goes.
			if !a.json {
				fmt.Fprintf(a.stderr, "pyro: merge this into %s\n", where)
			}
			enc := json.NewEncoder(a.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(cfg)
		},
	}
}

// hostDoctorReport is what `host doctor` found.
type hostDoctorReport struct {
	Server struct {
		Command   []string `json:"command"`
		Starts    bool     `json:"starts"`
		ToolCount int      `json:"tool_count"`
		Error     string   `json:"error,omitempty"`
	} `json:"server"`
	Hosts []hostCheck `json:"hosts"`
	OK    bool        `json:"ok"`
}

type hostCheck struct {
	Host       string `json:"host"`
	OnPath     bool   `json:"on_path"`
	Registered bool   `json:"registered"`
	Hint       string `json:"hint,omitempty"`
}

func (a *app) hostDoctor() *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check that pyro's MCP server starts and which hosts have it registered",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			server, err := serverArgv()
			if err != nil {
				return err
			}
			var rep hostDoctorReport
			rep.Server.Command = server
			rep.Server.ToolCount, err = serverStarts(cmd.Context(), server)
			rep.Server.Starts = err == nil
			if err != nil {
				rep.Server.Error = err.Error()
			}
			for _, name := range []string{"claude-code", "codex"} {
				h := hostCLIs[name]
				c := hostCheck{Host: name}
				if path, err := exec.LookPath(h.exe); err == nil {
					c.OnPath = true
					ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
					out, _ := exec.CommandContext(ctx, path, h.list...).Output()
					cancel()
					c.Registered = registered(string(out))
				}
				if !c.Registered {
					c.Hint = "pyro host connect " + name
				}
				rep.Hosts = append(rep.Hosts, c)
			}
			rep.OK = rep.Server.Starts
			if err := a.emit(rep, func(w io.Writer) {
				if rep.Server.Starts {
					fmt.Fprintf(w, "ok    the MCP server starts and lists %d tools: %s\n", rep.Server.ToolCount, shellJoin(server))
				} else {
					fmt.Fprintf(w, "FAIL  the MCP server does not start: %s\n", termtext.Clean(rep.Server.Error))
				}
				for _, c := range rep.Hosts {
					switch {
					case c.Registered:
						fmt.Fprintf(w, "ok    %s has pyro registered\n", c.Host)
					case c.OnPath:
						fmt.Fprintf(w, "--    %s is installed without pyro (run: %s)\n", c.Host, c.Hint)
					default:
						fmt.Fprintf(w, "--    %s is not installed\n", c.Host)
					}
				}
			}); err != nil {
				return err
			}
			if !rep.OK {
				return errdefs.New(errdefs.ErrUnavailable, "run `pyro doctor` for what this host lacks", "pyro's MCP server does not start")
			}
			return nil
		},
	}
}

// registered reports whether a host's `mcp list` output names the pyro
// server (a line starting with "pyro", as both CLIs print them).
func registered(out string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(strings.TrimSpace(line))
		if len(f) > 0 && strings.TrimRight(f[0], ":") == hostServerName {
			return true
		}
	}
	return false
}

// serverStarts runs the server command the way a host would (stdio),
// initializes an MCP session and lists the tools, within 30 s.
func serverStarts(ctx context.Context, server []string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, server[0], append(server[1:], "--project-path=")...)
	client := mcp.NewClient(&mcp.Implementation{Name: "pyro-host-doctor", Version: version()}, nil)
	cs, err := client.Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		return 0, err
	}
	defer cs.Close()
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		return 0, err
	}
	return len(res.Tools), nil
}

// shellJoin quotes argv for a POSIX shell.
func shellJoin(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:@") == "" {
			out[i] = a
		} else {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}

// capWriter keeps the first n bytes written to it.
type capWriter struct {
	w io.Writer
	n int
}

func (c *capWriter) Write(p []byte) (int, error) {
	if c.n > 0 {
		q := p
		if len(q) > c.n {
			q = q[:c.n]
		}
		c.n -= len(q)
		_, _ = c.w.Write(q)
	}
	return len(p), nil
}
