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

func (a *app) workspaceCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "workspace",
		Short: "Persistent workspaces: seed, exec, sync, export, diff, snapshots, reset",
		Long: `A workspace is a long-lived microVM with a persistent /workspace on its own disk
image on the host: a crash loses nothing an exec finished writing, and the next
command restarts the VM on the same disk. The create-time /workspace is kept as
the immutable "baseline" snapshot for diff and reset.`,
		Example: `  id=$(pyro workspace create --json --seed-path ./myproject debian:12 | jq -r .workspace_id)
  pyro workspace exec $id -- python3 -m pytest -q
  job=$(pyro workspace exec --background --json $id -- make all | jq -r .job_id)
  pyro workspace job wait $id $job --timeout-seconds 60
  pyro workspace diff $id
  pyro workspace snapshot create $id green
  pyro workspace reset $id --snapshot green
  pyro workspace export $id report.txt --output ./report.txt
  pyro workspace delete $id`,
	}
	snap := &cobra.Command{Use: "snapshot", Short: "Create, list and delete named snapshots of /workspace"}
	snap.AddCommand(a.wsSnapshotCreate(), a.wsSnapshotList(), a.wsSnapshotDelete())
	sync := &cobra.Command{Use: "sync", Short: "Import host content into a workspace"}
	sync.AddCommand(a.wsSyncPush())
	cmd.AddCommand(a.wsCreate(), sync, a.wsExec(), a.wsExport(), a.wsDiff(), snap, a.wsReset(),
		a.wsStatus(), a.wsLogs(), a.wsDelete(), a.wsList(), a.serviceCommand(), a.shellCommand(), a.wsNetwork())
	cmd.AddCommand(a.wsUpdate(), a.wsStop(), a.wsStart())
	cmd.AddCommand(a.wsFileCommand(), a.wsPatchCommand(), a.wsSummary(), a.wsDiskCommand())
	cmd.AddCommand(a.wsCheckpointCommand(), a.wsUndo())
	cmd.AddCommand(a.wsJobCommand())
	cmd.AddCommand(a.wsFork())
	return cmd
}

// maxStdinSecrets bounds what `--secret NAME` reads from stdin.
const maxStdinSecrets = 1 << 20

// parseSecretFlags turns --secret NAME=VALUE, --secret NAME and
// --secret-file NAME=PATH flags into secrets. A bare NAME takes its value
// from stdin, so the value never sits on a command line (where every local
// user can read it in /proc): with one bare NAME, stdin is the value (one
// trailing newline removed, as `echo` adds it); with several, stdin holds
// one NUL-terminated value per bare NAME, in flag order (what the Python
// SDK sends; values are exact then).
func parseSecretFlags(literal, files []string, stdin io.Reader) ([]pyro.Secret, error) {
	var out []pyro.Secret
	var fromStdin []int // indexes in out of the bare NAMEs
	for _, kv := range literal {
		name, value, ok := strings.Cut(kv, "=")
		if name == "" {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "use --secret NAME=VALUE, or --secret NAME with the value on stdin", "a --secret has no NAME")
		}
		if !ok {
			fromStdin = append(fromStdin, len(out))
		}
		out = append(out, pyro.Secret{Name: name, Value: value})
	}
	if len(fromStdin) > 0 {
		values, err := readStdinSecrets(stdin, len(fromStdin))
		if err != nil {
			return nil, err
		}
		for i, at := range fromStdin {
			out[at].Value = values[i]
		}
	}
	for _, kv := range files {
		name, path, ok := strings.Cut(kv, "=")
		if !ok || path == "" {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "use --secret-file NAME=PATH", "bad --secret-file %q", kv)
		}
		out = append(out, pyro.Secret{Name: name, FilePath: path})
	}
	return out, nil
}

// readStdinSecrets reads n secret values from r (see parseSecretFlags).
func readStdinSecrets(r io.Reader, n int) ([]string, error) {
	if r == nil {
		r = strings.NewReader("")
	}
	b, err := io.ReadAll(io.LimitReader(r, maxStdinSecrets+1))
	if err != nil {
		return nil, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "read --secret values from stdin")
	}
	if len(b) > maxStdinSecrets {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "use --secret-file NAME=PATH for large secrets", "stdin holds more than %d bytes of secrets", maxStdinSecrets)
	}
	s := string(b)
	if strings.Contains(s, "\x00") {
		values := strings.Split(strings.TrimSuffix(s, "\x00"), "\x00")
		if len(values) != n {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "end each value on stdin with a NUL byte, one per --secret NAME, in order",
				"stdin holds %d NUL-terminated values for %d --secret NAME flags", len(values), n)
		}
		return values, nil
	}
	if n != 1 {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, `end each value on stdin with a NUL byte, in flag order: printf '%s\0' "$A" "$B" | pyro ...`,
			"%d --secret NAME flags read stdin, which holds no NUL separators", n)
	}
	return []string{strings.TrimSuffix(s, "\n")}, nil
}

// parseSecretEnv turns SECRET[=VAR] flags into a mapping.
func parseSecretEnv(flags []string) map[string]string {
	if len(flags) == 0 {
		return nil
	}
	m := map[string]string{}
	for _, f := range flags {
		name, v, _ := strings.Cut(f, "=")
		m[name] = v
	}
	return m
}

func (a *app) wsCreate() *cobra.Command {
	var o pyro.CreateWorkspaceOptions
	var secrets, secretFiles, labels []string
	var idOnly bool
	cmd := &cobra.Command{
		Use:   "create [ENVIRONMENT]",
		Short: "Create and start a workspace, optionally seeded from a host folder or archive",
		Example: `  pyro workspace create debian:12
  pyro workspace create --seed-path ./src --network debian:12-build
  pyro workspace create --secret API_TOKEN=abc --secret-file KEY=./key.pem debian:12
  printf %s "$API_TOKEN" | pyro workspace create --secret API_TOKEN debian:12
  pyro workspace create --name api --label team=infra --id-only`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			if len(args) == 1 {
				o.Environment = args[0]
			}
			parsed, err := parseSecretFlags(secrets, secretFiles, cmd.InOrStdin())
			if err != nil {
				return err
			}
			o.Secrets = parsed
			if o.Labels, err = pyro.ParseLabels(labels); err != nil {
				return err
			}
			if err := a.pullImageFirst(cmd.Context(), o.Environment); err != nil {
				return err
			}
			ws, err := c.CreateWorkspace(cmd.Context(), o)
			if err != nil {
				return err
			}
			if idOnly {
				return a.emitID(ws.WorkspaceID)
			}
			return a.emit(ws, func(w io.Writer) { printWorkspace(w, ws) })
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.VCPUCount, "vcpu-count", pyro.DefaultVCPUCount, "number of guest vCPUs")
	f.IntVar(&o.MemMiB, "mem-mib", pyro.DefaultMemMiB, "guest memory in MiB")
	f.BoolVar(&o.Network, "network", false, "outbound networking (same as --network-policy egress)")
	networkFlags(f, &o.NetworkPolicy, &o.AllowHosts)
	f.BoolVar(&o.AllowHostCompat, "allow-host-compat", false, "fall back to host namespaces when no guest can boot")
	f.StringVar(&o.SeedPath, "seed-path", "", "host directory or .tar/.tar.gz/.tgz to fill /workspace with")
	f.StringArrayVar(&secrets, "secret", nil, "guest-only secret NAME=VALUE, or NAME to read the value from stdin and keep it off the command line (repeatable)")
	f.StringArrayVar(&secretFiles, "secret-file", nil, "guest-only secret NAME=PATH read from a host file, e.g. a 0600 file (repeatable)")
	f.StringVar(&o.Name, "name", "", "a name usable wherever the workspace id is (unique among workspaces)")
	f.StringArrayVar(&labels, "label", nil, "a KEY=VALUE label to find the workspace by (repeatable)")
	f.BoolVar(&idOnly, "id-only", false, "print only the workspace id (for $(...) in scripts)")
	f.BoolVar(&o.Checkpoints, "checkpoints", false, "take a checkpoint before every command, for `workspace undo` and `diff --since`")
	return cmd
}

func (a *app) wsSyncPush() *cobra.Command {
	var dest string
	cmd := &cobra.Command{
		Use:     "push WORKSPACE_ID SOURCE_PATH [--dest WORKSPACE_PATH]",
		Short:   "Import a host directory or archive into a workspace",
		Example: "  pyro workspace sync push 3f2a9c1b7d4e ./src --dest /workspace/src",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			r, err := c.PushWorkspaceSync(cmd.Context(), args[0], args[1], dest)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				fmt.Fprintf(w, "pushed %d files (%s) from %s into %s\n", r.FileCount, humanBytes(r.Bytes), r.SourcePath, r.Dest)
			})
		},
	}
	cmd.Flags().StringVar(&dest, "dest", pyro.WorkspaceDir, "destination directory under /workspace")
	return cmd
}

func (a *app) wsExec() *cobra.Command {
	var o pyro.ExecOptions
	var secretEnv []string
	var background bool
	cmd := &cobra.Command{
		Use:   "exec WORKSPACE_ID [--timeout-seconds N] [--secret-env NAME[=VAR]] [--background] -- COMMAND [ARG...]",
		Short: "Run a command in /workspace; the workspace stays alive",
		Long: `Runs COMMAND in /workspace, streams its output and exits with its exit code
(--json: one result object). State persists between calls; every exec is
recorded in the workspace's history (pyro workspace logs).`,
		Example: "  pyro workspace exec 3f2a9c1b7d4e -- ls -la\n  pyro workspace exec 3f2a9c1b7d4e --secret-env API_TOKEN -- 'curl -H \"Authorization: $API_TOKEN\" ...'",
		Args:    commandArgs(1, "WORKSPACE_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			o.Command = args[1:]
			o.SecretEnv = parseSecretEnv(secretEnv)
			if background {
				return a.wsExecBackground(cmd, args[0], o)
			}
			a.streamTo(&o.OnOutput)
			res, err := c.ExecWorkspace(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			return a.execResult(res)
		},
	}
	cmd.Flags().IntVar(&o.TimeoutSeconds, "timeout-seconds", pyro.DefaultTimeoutSeconds, "kill the command's process group after this many seconds")
	cmd.Flags().StringArrayVar(&secretEnv, "secret-env", nil, "expose secret NAME as env var (NAME or NAME=VAR; repeatable)")
	cmd.Flags().BoolVar(&background, "background", false, "start the command as a background job and print its job id (no timeout unless --timeout-seconds; see pyro workspace job)")
	return cmd
}

func (a *app) wsExport() *cobra.Command {
	var output string
	var o pyro.ExportOptions
	cmd := &cobra.Command{
		Use:     "export WORKSPACE_ID PATH --output HOST_PATH [--overwrite]",
		Short:   "Copy one file or directory from /workspace to the host",
		Example: "  pyro workspace export 3f2a9c1b7d4e dist --output ./dist",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			r, err := c.ExportWorkspace(cmd.Context(), args[0], args[1], output, &o)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				fmt.Fprintf(w, "exported %s %s to %s (%d files, %s)\n", r.Kind, r.Path, r.OutputPath, r.FileCount, humanBytes(r.Bytes))
				for _, s := range r.Skipped {
					fmt.Fprintf(w, "skipped %s: %s\n", termtext.Line(s.Path), s.Reason)
				}
				if more := r.SkippedCount - len(r.Skipped); more > 0 {
					fmt.Fprintf(w, "skipped %d more\n", more)
				}
			})
		},
	}
	cmd.Flags().StringVar(&output, "output", "", "host path to write (must not exist unless --overwrite)")
	cmd.Flags().BoolVar(&o.Overwrite, "overwrite", false, "replace an existing output path")
	_ = cmd.MarkFlagRequired("output")
	return cmd
}

func (a *app) wsDiff() *cobra.Command {
	var since int
	cmd := &cobra.Command{
		Use:     "diff WORKSPACE_ID [--since N]",
		Short:   "Show what changed in /workspace since the create-time baseline (or since checkpoint N)",
		Example: "  pyro workspace diff 3f2a9c1b7d4e\n  pyro workspace diff 3f2a9c1b7d4e --since 4",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			var d pyro.WorkspaceDiff
			var err error
			if cmd.Flags().Changed("since") {
				d, err = c.DiffWorkspaceSince(cmd.Context(), args[0], since)
			} else {
				d, err = c.DiffWorkspace(cmd.Context(), args[0])
			}
			if err != nil {
				return err
			}
			return a.emit(d, func(w io.Writer) {
				if len(d.Changes) == 0 {
					fmt.Fprintln(w, "no changes since the baseline")
					return
				}
				for _, ch := range d.Changes {
					mark := map[string]string{"added": "A", "modified": "M", "deleted": "D"}[ch.Status]
					fmt.Fprintf(w, "%s %s", mark, termtext.Line(ch.Path))
					if ch.Note != "" {
						fmt.Fprintf(w, " (%s)", termtext.Line(ch.Note))
					}
					fmt.Fprintln(w)
				}
				for _, ch := range d.Changes {
					if ch.Diff != "" {
						// Guest text: no escape sequence reaches the terminal.
						fmt.Fprint(w, "\n"+termtext.Clean(ch.Diff))
					}
				}
			})
		},
	}
	cmd.Flags().IntVar(&since, "since", 0, "name what the commands since checkpoint N touched (names only)")
	return cmd
}

func (a *app) wsSnapshotCreate() *cobra.Command {
	return &cobra.Command{
		Use:   "create WORKSPACE_ID SNAPSHOT_NAME",
		Short: "Store the current /workspace as a named snapshot",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			s, err := c.CreateSnapshot(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return a.emit(s, func(w io.Writer) {
				fmt.Fprintf(w, "snapshot %s: %s, sha256 %s\n", s.Name, humanBytes(s.Bytes), shortDigest(s.SHA256))
			})
		},
	}
}

func (a *app) wsSnapshotList() *cobra.Command {
	return &cobra.Command{
		Use:   "list WORKSPACE_ID",
		Short: "List the baseline and named snapshots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			list, err := c.ListSnapshots(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(map[string]any{"workspace_id": args[0], "snapshots": list}, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tCREATED\tSIZE")
				for _, s := range list {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.CreatedAt.Format("2006-01-02 15:04:05"), humanBytes(s.Bytes))
				}
				tw.Flush()
			})
		},
	}
}

func (a *app) wsSnapshotDelete() *cobra.Command {
	return &cobra.Command{
		Use:   "delete WORKSPACE_ID SNAPSHOT_NAME",
		Short: "Delete a named snapshot (the baseline stays)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			if err := c.DeleteSnapshot(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			return a.emit(map[string]any{"workspace_id": args[0], "snapshot": args[1], "deleted": true},
				func(w io.Writer) { fmt.Fprintf(w, "deleted snapshot %s\n", args[1]) })
		},
	}
}

func (a *app) wsReset() *cobra.Command {
	var snapshot string
	cmd := &cobra.Command{
		Use:     "reset WORKSPACE_ID [--snapshot NAME|baseline]",
		Short:   "Recreate the whole sandbox and restore /workspace from a snapshot",
		Example: "  pyro workspace reset 3f2a9c1b7d4e\n  pyro workspace reset 3f2a9c1b7d4e --snapshot green",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			ws, err := c.ResetWorkspace(cmd.Context(), args[0], snapshot)
			if err != nil {
				return err
			}
			return a.emit(ws, func(w io.Writer) { printWorkspace(w, ws) })
		},
	}
	cmd.Flags().StringVar(&snapshot, "snapshot", pyro.BaselineSnapshot, "snapshot to restore")
	return cmd
}

func (a *app) wsStatus() *cobra.Command {
	return &cobra.Command{
		Use:   "status WORKSPACE_ID",
		Short: "Show a workspace's observed status",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			ws, err := c.StatusWorkspace(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(ws, func(w io.Writer) { printWorkspace(w, ws) })
		},
	}
}

func (a *app) wsLogs() *cobra.Command {
	return &cobra.Command{
		Use:   "logs WORKSPACE_ID",
		Short: "Show the workspace's command history",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			h, err := c.LogsWorkspace(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(map[string]any{"workspace_id": args[0], "entries": h}, func(w io.Writer) {
				for _, e := range h {
					fmt.Fprintf(w, "#%d %s  exit %d  %d ms  $ %s\n", e.Seq, e.StartedAt.Format("15:04:05"), e.ExitCode, e.DurationMS, strings.Join(e.Command, " "))
					for _, s := range []string{e.Stdout, e.Stderr} {
						if s != "" {
							fmt.Fprintf(w, "    %s\n", strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    "))
						}
					}
					printDenials(w, "    ", e.NetworkDenials)
				}
			})
		},
	}
}

func (a *app) wsDelete() *cobra.Command {
	return &cobra.Command{
		Use:   "delete WORKSPACE_ID",
		Short: "Stop a workspace and remove its disk, snapshots, history and secrets",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			r, err := c.DeleteWorkspace(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) { fmt.Fprintf(w, "deleted workspace %s (was %s)\n", r.WorkspaceID, r.PriorState) })
		},
	}
}

func printWorkspace(w io.Writer, ws pyro.Workspace) {
	fmt.Fprintf(w, "workspace_id: %s\nenvironment:  %s\nstate:        %s\n", ws.WorkspaceID, ws.Environment, ws.State)
	printNames(w, ws)
	if ws.Reason != "" {
		fmt.Fprintf(w, "reason:       %s\n", termtext.Clean(ws.Reason))
	}
	s := ws.WorkspaceSeed
	fmt.Fprintf(w, "seed:         %s", s.Mode)
	if s.SourcePath != "" {
		fmt.Fprintf(w, " from %s (%d files, %s)", s.SourcePath, s.FileCount, humanBytes(s.Bytes))
	}
	fmt.Fprintf(w, "\nresets:       %d", ws.ResetCount)
	if ws.LastResetAt != nil {
		fmt.Fprintf(w, " (last %s)", ws.LastResetAt.Format("2006-01-02 15:04:05"))
	}
	fmt.Fprintf(w, "\nservices:     %d (%d running)\ncommands:     %d\n", ws.ServiceCount, ws.RunningServiceCount, ws.CommandCount)
	fmt.Fprintf(w, "network:      %s\n", policyText(ws.NetworkPolicy, ws.AllowHosts))
	printDenials(w, "", ws.NetworkDenials)
	printJobs(w, ws.Jobs)
	if len(ws.Secrets) > 0 {
		var names []string
		for _, sec := range ws.Secrets {
			names = append(names, sec.Name+" ("+sec.Source+")")
		}
		fmt.Fprintf(w, "secrets:      %s\n", strings.Join(names, ", "))
	}
}

// shortDigest abbreviates a hex digest for people; anything that is not
// one is shown as it is (never sliced blindly).
func shortDigest(d string) string {
	if len(d) == 64 && strings.Trim(d, "0123456789abcdef") == "" {
		return d[:12]
	}
	return termtext.Line(d)
}
