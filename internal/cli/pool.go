package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

// poolCommand is `pyro pool`: warm pools of restored, paused guests that
// hand a `pyro run` its guest in milliseconds (issue #14).
func (a *app) poolCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Keep restored guests ready so runs start in milliseconds",
		Long: `A warm pool keeps restored, paused guests of one configuration (environment,
vCPUs, memory; no network) and hands one to each ` + "`pyro run`" + ` of that configuration
in milliseconds, refilling in the background. With --workspace it keeps whole
workspaces ready for ` + "`pyro workspace create`" + ` instead (unseeded, no network); a claimed workspace is the creator's and outlives the pool. Everything else
starts the usual way (warm restore, else cold boot). Results served by a pool say
start: pool, and boot_ms is the hand-out.`,
	}
	cmd.AddCommand(a.poolStartCommand(), a.poolStatusCommand(), a.poolStopCommand())
	return cmd
}

func (a *app) poolStartCommand() *cobra.Command {
	var o pyro.PoolOptions
	cmd := &cobra.Command{
		Use:   "start [ENVIRONMENT]",
		Short: "Run a warm pool in the foreground (Ctrl-C stops it)",
		Long: `Keeps --size restored, paused guests of ENVIRONMENT (default debian:12) ready
until Ctrl-C or ` + "`pyro pool stop`" + `. Its guests are children of this process:
when it stops, or is killed, none of them is left running. Idle guests cost memory
(mostly shared with the memory snapshot), no CPU. With --json it prints the final
status as one object when it stops.`,
		Example: `  pyro pool start debian:12                # 2 guests, 1 vCPU, 1024 MiB
  pyro pool start --size 4 --mem-mib 512 debian:12-base &
  pyro run --mem-mib 512 debian:12-base -- true   # start: pool
  pyro pool start --workspace --size 2 debian:12 &
  pyro workspace create debian:12                 # start: pool
  pyro pool stop`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.Environment = args[0]
			}
			if o.Environment == "" {
				o.Environment = pyro.DefaultEnvironment
			}
			ctx := cmd.Context()
			if err := a.pullImageFirst(ctx, o.Environment); err != nil {
				return err
			}
			p, err := a.sdk.StartPool(ctx, o)
			if err != nil {
				return err
			}
			defer p.Close()
			st := p.Status()
			if !a.json {
				fmt.Fprintf(a.stderr, "pyro: %s of %s (%d vCPU, %d MiB): making %d; Ctrl-C stops it\n",
					poolKind(st), st.Environment, st.VCPUCount, st.MemMiB, st.Size)
			}
			go func() {
				t := time.Now()
				if p.WaitReady(ctx, st.Size) == nil && !a.json {
					fmt.Fprintf(a.stderr, "pyro: pool ready: %d guests in %.1f s\n", st.Size, time.Since(t).Seconds())
				}
			}()
			select {
			case <-ctx.Done():
			case <-p.Done():
			}
			st = p.Status()
			_ = p.Close()
			return a.emit(st, func(w io.Writer) {
				fmt.Fprintf(w, "pool of %s stopped: %d guests handed out, %d failures\n", st.Environment, st.Served, st.Failures)
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Size, "size", 2, "how many ready guests to keep (at most 64)")
	f.IntVar(&o.VCPUCount, "vcpu-count", pyro.DefaultVCPUCount, "number of guest vCPUs of the pooled configuration")
	f.IntVar(&o.MemMiB, "mem-mib", pyro.DefaultMemMiB, "guest memory in MiB of the pooled configuration")
	f.BoolVar(&o.Workspace, "workspace", false, "keep workspaces ready for `pyro workspace create` instead of guests for `pyro run`")
	return cmd
}

func (a *app) poolStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "status",
		Short:   "List the running warm pools",
		Example: "  pyro pool status\n  pyro pool status --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := a.sdk.ListPools(cmd.Context())
			if err != nil {
				return err
			}
			return a.emit(map[string]any{"pools": list, "count": len(list)}, func(w io.Writer) { printPools(w, list) })
		},
	}
}

func printPools(w io.Writer, list []pyro.PoolStatus) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no warm pools (start one with `pyro pool start ENV`)")
		return
	}
	for _, p := range list {
		fmt.Fprintf(w, "%s  %s  %d vCPU %d MiB  ready %d/%d  in use %d  filling %d  served %d  pid %d",
			p.Environment, poolKind(p), p.VCPUCount, p.MemMiB, p.Ready, p.Size, p.Leased, p.Filling, p.Served, p.PID)
		if p.LastHandoutMS > 0 {
			fmt.Fprintf(w, "  last hand-out %.1f ms", p.LastHandoutMS)
		}
		if p.Failures > 0 {
			fmt.Fprintf(w, "  failures %d (%s)", p.Failures, termtext.Line(p.LastError))
		}
		fmt.Fprintln(w)
	}
}

func (a *app) poolStopCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stop [ENVIRONMENT]",
		Short: "Stop the warm pools (of ENVIRONMENT, or all)",
		Long: `Asks each warm pool (of ENVIRONMENT, or every one) to stop and waits until it
has: its guests, those in use by runs included, are destroyed. Workspaces a workspace
pool handed out are their creators' and stay; those it had not handed out go.`,
		Example: "  pyro pool stop\n  pyro pool stop debian:12-base --json",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			env := ""
			if len(args) == 1 {
				env = args[0]
			}
			stopped, err := a.sdk.StopPools(cmd.Context(), env)
			if err != nil {
				return err
			}
			if werr := waitPoolsGone(cmd.Context(), a.sdk, stopped); werr != nil {
				return werr
			}
			return a.emit(map[string]any{"stopped": stopped, "count": len(stopped)}, func(w io.Writer) {
				if len(stopped) == 0 {
					fmt.Fprintln(w, "no warm pool to stop")
				}
				for _, p := range stopped {
					fmt.Fprintf(w, "stopped pool of %s (%d vCPU, %d MiB, pid %d)\n", p.Environment, p.VCPUCount, p.MemMiB, p.PID)
				}
			})
		},
	}
}

// waitPoolsGone waits (bounded) until the stopped pools no longer answer.
func waitPoolsGone(ctx context.Context, c *pyro.Client, stopped []pyro.PoolStatus) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		list, err := c.ListPools(ctx)
		if err != nil {
			return err
		}
		left := 0
		for _, p := range list {
			for _, s := range stopped {
				if p.Socket == s.Socket && p.PID == s.PID {
					left++
				}
			}
		}
		if left == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d pools still running after the stop request: %w", left, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// poolKind says what a pool serves.
func poolKind(p pyro.PoolStatus) string {
	if p.Workspace {
		return "workspace pool"
	}
	return "run pool"
}
