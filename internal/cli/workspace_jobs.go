package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

// wsExecBackground starts `workspace exec --background`: the job id is
// printed at once (--json: the job object).
func (a *app) wsExecBackground(cmd *cobra.Command, id string, o pyro.ExecOptions) error {
	if !cmd.Flags().Changed("timeout-seconds") {
		o.TimeoutSeconds = 0 // a background job runs until it exits
	}
	j, err := a.sdk.StartWorkspaceJob(cmd.Context(), id, o)
	if err != nil {
		return err
	}
	return a.emit(j, func(w io.Writer) { fmt.Fprintln(w, j.JobID) })
}

func (a *app) wsJobCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Read and wait for background jobs (pyro workspace exec --background)",
		Example: `  job=$(pyro workspace exec --background --json $id -- 'sleep 90; make test' | jq -r .job_id)
  pyro workspace job read $id $job
  pyro workspace job wait $id $job --timeout-seconds 60`,
	}
	cmd.AddCommand(a.wsJobRead(), a.wsJobWait())
	return cmd
}

func (a *app) wsJobRead() *cobra.Command {
	var cursor int64
	var maxChars int
	cmd := &cobra.Command{
		Use:     "read WORKSPACE_ID JOB_ID [--cursor N] [--max-chars N]",
		Short:   "Print a job's output (stdout and stderr merged) from a cursor on",
		Example: "  pyro workspace job read $id $job --cursor 0\n  pyro workspace job read $id $job --json | jq -r .next_cursor",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := a.sdk.ReadWorkspaceJob(cmd.Context(), args[0], args[1], cursor, maxChars)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				if r.Dropped != nil {
					fmt.Fprintf(w, "[... bytes %d-%d dropped ...]\n", r.Dropped.From, r.Dropped.To)
				}
				fmt.Fprint(w, termtext.Clean(r.Output))
				fmt.Fprintf(w, "\n[%s]\n", jobStateText(r.State, r.ExitCode, r.NextCursor, r.More))
			})
		},
	}
	cmd.Flags().Int64Var(&cursor, "cursor", 0, "byte offset to read from (the previous read's next_cursor)")
	cmd.Flags().IntVar(&maxChars, "max-chars", 0, "at most this many characters (default 65536)")
	return cmd
}

func (a *app) wsJobWait() *cobra.Command {
	var timeout int
	cmd := &cobra.Command{
		Use:     "wait WORKSPACE_ID JOB_ID [--timeout-seconds N]",
		Short:   fmt.Sprintf("Wait up to N seconds (at most %d) for a job to exit; print its state and exit code", pyro.MaxJobWaitSeconds),
		Example: "  pyro workspace job wait $id $job --timeout-seconds 60",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := a.sdk.WaitWorkspaceJob(cmd.Context(), args[0], args[1], timeout)
			if err != nil {
				return err
			}
			return a.emit(j, func(w io.Writer) { printJobs(w, []pyro.WorkspaceJob{j}) })
		},
	}
	cmd.Flags().IntVar(&timeout, "timeout-seconds", 30, fmt.Sprintf("how long to wait (0-%d)", pyro.MaxJobWaitSeconds))
	return cmd
}

func jobStateText(state string, code *int, next int64, more bool) string {
	s := termtext.Line(state) // the guest's answer
	if code != nil {
		s = fmt.Sprintf("%s %d", s, *code)
	}
	s += fmt.Sprintf(", next cursor %d", next)
	if more {
		s += ", more"
	}
	return s
}

// printJobs prints one line per job (status and wait). Ids, states and
// commands are what the guest answered: shown as text.
func printJobs(w io.Writer, jobs []pyro.WorkspaceJob) {
	for _, j := range jobs {
		state := termtext.Line(j.State)
		if j.ExitCode != nil {
			state = fmt.Sprintf("exited %d", *j.ExitCode)
		}
		if j.TimedOut {
			state += " (timed out)"
		}
		fmt.Fprintf(w, "job:          %s %s %s\n", termtext.Line(j.JobID), state, termtext.Line(j.Command))
	}
}
