package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

func (a *app) serviceCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Manage long-running named services in a workspace",
		Long: `Services are named long-running processes (dev servers, databases) supervised
by the guest agent, with typed readiness probes checked inside the guest.`,
		Example: `  pyro workspace service start $id web --ready-http http://127.0.0.1:8000/ -- python3 -m http.server 8000
  pyro workspace service logs $id web --tail-lines 50
  pyro workspace service stop $id web`,
	}
	cmd.AddCommand(a.serviceStart(), a.serviceList(), a.serviceStatus(), a.serviceLogs(), a.serviceStop())
	return cmd
}

func (a *app) serviceStart() *cobra.Command {
	var o pyro.StartServiceOptions
	var file, tcp, httpURL, command string
	var httpStatus int
	var secretEnv []string
	cmd := &cobra.Command{
		Use:   "start WORKSPACE_ID NAME [--cwd DIR] [readiness flags] -- COMMAND [ARG...]",
		Short: "Start a named service and wait for its readiness probe",
		Long: `Starts COMMAND as service NAME. With a readiness flag, returns once the probe
passes; if it does not pass within --ready-timeout-seconds, the service is
stopped and the error shows the probe's last error and the service's last log
lines. Without one, returns as soon as the process runs.`,
		Example: `  pyro workspace service start $id web --ready-tcp 127.0.0.1:8000 -- python3 -m http.server 8000
  pyro workspace service start $id worker --ready-file /tmp/ready -- ./worker.sh
  pyro workspace service start $id web --publish 18000:8000 -- python3 -m http.server 8000`,
		Args: commandArgs(2, "WORKSPACE_ID and NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			probes := 0
			for _, p := range []struct{ typ, v string }{{"file", file}, {"tcp", tcp}, {"http", httpURL}, {"command", command}} {
				if p.v == "" {
					continue
				}
				probes++
				r := &pyro.Readiness{Type: p.typ}
				switch p.typ {
				case "file":
					r.Path = p.v
				case "tcp":
					r.Address = p.v
				case "http":
					r.URL, r.ExpectStatus = p.v, httpStatus
				case "command":
					r.Command = p.v
				}
				o.Readiness = r
			}
			if probes > 1 {
				return errdefs.New(errdefs.ErrInvalidArgument, "pick one of --ready-file, --ready-tcp, --ready-http, --ready-command", "several readiness probes given")
			}
			o.Command = args[2:]
			o.SecretEnv = parseSecretEnv(secretEnv)
			s, err := c.StartService(cmd.Context(), args[0], args[1], o)
			if err != nil {
				return err
			}
			return a.emit(s, func(w io.Writer) { printService(w, s) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Cwd, "cwd", pyro.WorkspaceDir, "working directory in the guest")
	f.StringVar(&file, "ready-file", "", "ready when this guest path exists")
	f.StringVar(&tcp, "ready-tcp", "", "ready when HOST:PORT accepts a connection (in the guest)")
	f.StringVar(&httpURL, "ready-http", "", "ready when this URL answers 2xx/3xx (in the guest)")
	f.IntVar(&httpStatus, "ready-http-status", 0, "with --ready-http: the exact status to expect")
	f.StringVar(&command, "ready-command", "", "ready when this shell command exits 0")
	f.IntVar(&o.ReadyTimeoutSeconds, "ready-timeout-seconds", pyro.DefaultReadyTimeoutSeconds, "give up (and stop the service) after this many seconds")
	f.IntVar(&o.ReadyIntervalMS, "ready-interval-ms", pyro.DefaultReadyIntervalMS, "milliseconds between probe attempts")
	f.StringArrayVar(&secretEnv, "secret-env", nil, "expose secret NAME as env var (NAME or NAME=VAR; repeatable)")
	f.StringArrayVar(&o.Publish, "publish", nil, "forward 127.0.0.1:HOST_PORT on the host to GUEST_PORT while the service runs: [HOST_PORT:]GUEST_PORT, HOST_PORT 1024-65535 (needs --network-policy egress+published-ports; repeatable)")
	return cmd
}

func (a *app) serviceList() *cobra.Command {
	return &cobra.Command{
		Use:   "list WORKSPACE_ID",
		Short: "List a workspace's services",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			list, err := c.ListServices(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(map[string]any{"workspace_id": args[0], "services": list}, func(w io.Writer) { printServices(w, list) })
		},
	}
}

func (a *app) serviceStatus() *cobra.Command {
	return &cobra.Command{
		Use:   "status WORKSPACE_ID NAME",
		Short: "Show one service's status",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			s, err := c.StatusService(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return a.emit(s, func(w io.Writer) { printService(w, s) })
		},
	}
}

func (a *app) serviceLogs() *cobra.Command {
	var o pyro.LogsServiceOptions
	cmd := &cobra.Command{
		Use:   "logs WORKSPACE_ID NAME [--tail-lines N] [--all]",
		Short: "Show the tail of a service's output",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			l, err := c.LogsService(cmd.Context(), args[0], args[1], &o)
			if err != nil {
				return err
			}
			return a.emit(l, func(w io.Writer) {
				if l.Truncated {
					fmt.Fprintln(a.stderr, "pyro: earlier output was dropped from the bounded log")
				}
				for _, line := range l.Lines {
					fmt.Fprintln(w, line)
				}
			})
		},
	}
	cmd.Flags().IntVar(&o.TailLines, "tail-lines", pyro.DefaultLogTailLines, "number of lines from the end")
	cmd.Flags().BoolVar(&o.All, "all", false, "everything the bounded log still holds")
	return cmd
}

func (a *app) serviceStop() *cobra.Command {
	return &cobra.Command{
		Use:   "stop WORKSPACE_ID NAME",
		Short: "Stop a service (SIGTERM to its process group, then SIGKILL)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			s, err := c.StopService(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return a.emit(s, func(w io.Writer) { printService(w, s) })
		},
	}
}

// printServices prints one row per service. Names, states and commands
// are what the guest answered: shown as text, never as escape sequences.
func printServices(w io.Writer, list []pyro.Service) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tPID\tCOMMAND")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", termtext.Line(s.Name), termtext.Line(s.State), s.PID, termtext.Line(strings.Join(s.Argv, " ")))
	}
	tw.Flush()
}

func printService(w io.Writer, s pyro.Service) {
	fmt.Fprintf(w, "service: %s\nstate:   %s\npid:     %d\ncommand: %s\n", termtext.Line(s.Name), termtext.Line(s.State), s.PID, termtext.Line(strings.Join(s.Argv, " ")))
	if s.ExitCode != nil {
		fmt.Fprintf(w, "exit:    %d\n", *s.ExitCode)
	}
	if s.ReadyAt != nil {
		fmt.Fprintf(w, "ready:   %s after %d ms\n", s.ReadyAt.Format("15:04:05"), s.ReadyAt.Sub(s.StartedAt).Milliseconds())
	}
	if s.Error != "" {
		fmt.Fprintf(w, "error:   %s\n", termtext.Clean(s.Error))
	}
	for _, p := range s.PublishedPorts {
		fmt.Fprintf(w, "publish: %s:%d -> guest port %d\n", p.HostAddress, p.HostPort, p.GuestPort)
	}
}

func (a *app) shellCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "shell",
		Short: "Persistent PTY shells in a workspace",
		Long: `A shell is a real PTY (bash, else sh) living in the guest across calls. Read
output by cursor: pass the next_cursor of one read as --cursor of the next and
nothing is missed or read twice.`,
		Example: `  sid=$(pyro workspace shell open --json $id | jq -r .shell_id)
  pyro workspace shell write $id $sid --input 'ls -la'
  pyro workspace shell read $id $sid --cursor 0
  pyro workspace shell signal $id $sid --signal INT
  pyro workspace shell close $id $sid`,
	}
	cmd.AddCommand(a.shellOpen(), a.shellRead(), a.shellWrite(), a.shellSignal(), a.shellClose())
	return cmd
}

func (a *app) shellOpen() *cobra.Command {
	var o pyro.OpenShellOptions
	var secretEnv []string
	var idOnly bool
	cmd := &cobra.Command{
		Use:   "open WORKSPACE_ID [--cwd DIR] [--cols N] [--rows N] [--id-only]",
		Short: "Open a persistent PTY shell",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			o.SecretEnv = parseSecretEnv(secretEnv)
			s, err := c.OpenShell(cmd.Context(), args[0], &o)
			if err != nil {
				return err
			}
			if idOnly {
				return a.emitID(s.ShellID)
			}
			return a.emit(s, func(w io.Writer) { fmt.Fprintf(w, "%s\n", s.ShellID) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Cwd, "cwd", pyro.WorkspaceDir, "working directory")
	f.IntVar(&o.Cols, "cols", pyro.DefaultShellCols, "terminal columns")
	f.IntVar(&o.Rows, "rows", pyro.DefaultShellRows, "terminal rows")
	f.IntVar(&o.BufferBytes, "buffer-bytes", 0, "output kept for readers (default 1 MiB)")
	f.StringArrayVar(&secretEnv, "secret-env", nil, "expose secret NAME as env var (NAME or NAME=VAR; repeatable)")
	f.BoolVar(&idOnly, "id-only", false, "print only the shell id (for $(...) in scripts)")
	return cmd
}

func (a *app) shellRead() *cobra.Command {
	var o pyro.ReadShellOptions
	cmd := &cobra.Command{
		Use:   "read WORKSPACE_ID SHELL_ID [--cursor N] [--max-chars N] [--plain] [--wait-for-idle-ms N]",
		Short: "Read shell output from a cursor",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			r, err := c.ReadShell(cmd.Context(), args[0], args[1], &o)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				if r.Dropped != nil {
					fmt.Fprintf(a.stderr, "pyro: bytes %d-%d were dropped from the bounded buffer\n", r.Dropped.From, r.Dropped.To)
				}
				fmt.Fprint(w, r.Output)
				fmt.Fprintf(a.stderr, "\npyro: next cursor %d\n", r.NextCursor)
			})
		},
	}
	cmd.Flags().Int64Var(&o.Cursor, "cursor", pyro.DefaultShellCursor, "byte offset to read from (the previous read's next_cursor)")
	cmd.Flags().IntVar(&o.MaxChars, "max-chars", pyro.DefaultShellMaxChars, "at most this many characters")
	cmd.Flags().BoolVar(&o.Plain, "plain", false, "render as the screen shows it: escape sequences stripped, carriage returns and backspaces applied")
	cmd.Flags().IntVar(&o.WaitForIdleMS, "wait-for-idle-ms", 0, "keep reading until the shell printed nothing for N ms (at most 60000; the whole read at most 120 s)")
	return cmd
}

func (a *app) shellWrite() *cobra.Command {
	var input string
	var noNewline bool
	cmd := &cobra.Command{
		Use:   "write WORKSPACE_ID SHELL_ID --input TEXT [--no-newline]",
		Short: "Type input into a shell (a newline is appended unless --no-newline)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			r, err := c.WriteShell(cmd.Context(), args[0], args[1], input, &pyro.WriteShellOptions{AppendNewline: pyro.Bool(!noNewline)})
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) { fmt.Fprintf(w, "wrote %d bytes\n", r.BytesWritten) })
		},
	}
	cmd.Flags().StringVar(&input, "input", "", "text to send")
	cmd.Flags().BoolVar(&noNewline, "no-newline", !pyro.DefaultAppendNewline, "do not append a newline")
	_ = cmd.MarkFlagRequired("input")
	return cmd
}

func (a *app) shellSignal() *cobra.Command {
	var sig string
	cmd := &cobra.Command{
		Use:   "signal WORKSPACE_ID SHELL_ID [--signal INT|TERM|KILL|HUP|QUIT|...]",
		Short: "Send a signal to the shell's foreground process group",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			r, err := c.SignalShell(cmd.Context(), args[0], args[1], sig)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) { printShellSignal(w, r) })
		},
	}
	cmd.Flags().StringVar(&sig, "signal", pyro.DefaultShellSignal, "signal name")
	return cmd
}

// printShellSignal prints a shell signal's answer; the signal's name is
// the guest's.
func printShellSignal(w io.Writer, r pyro.ShellSignal) {
	fmt.Fprintf(w, "sent %s to process group %d\n", termtext.Line(r.Signal), r.PGID)
}

func (a *app) shellClose() *cobra.Command {
	return &cobra.Command{
		Use:   "close WORKSPACE_ID SHELL_ID",
		Short: "Close a shell and end its processes",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			r, err := c.CloseShell(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) { fmt.Fprintf(w, "closed shell %s\n", r.ShellID) })
		},
	}
}
