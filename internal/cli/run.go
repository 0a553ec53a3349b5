package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
)

func (a *app) runCommand() *cobra.Command {
	var o pyro.RunOptions
	cmd := &cobra.Command{
		Use:   "run ENVIRONMENT [flags] -- COMMAND [ARG...]",
		Short: "Run one command in a fresh microVM, then delete the VM",
		Long: `Boots a fresh microVM from ENVIRONMENT, runs COMMAND in it and deletes the VM.

Several words after -- are an argv run directly; a single word is a shell
string run by /bin/sh -c. Human mode streams the guest's stdout and stderr and
exits with the guest command's exit code; --json prints one result object.
Ctrl-C stops the VM and removes its files.`,
		Example: `  pyro run debian:12 -- uname -a
  pyro run debian:12 -- 'python3 -c "print(6*7)" | tee /tmp/x'
  pyro run --vcpu-count 2 --mem-mib 2048 debian:12-build -- make -v
  pyro run --network debian:12 -- curl -sI https://deb.debian.org
  pyro run --network-policy egress --allow-host @pypi debian:12 -- pip download requests
  pyro run --json --timeout-seconds 5 debian:12-base -- sleep 60
  pyro run docker.io/library/python:3.12-slim -- python3 -V
  pyro run docker-archive:./img.tar -- id`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if len(args) == 0 {
				return usageError(cmd, "missing ENVIRONMENT (try `pyro env list`)")
			}
			if dash != 1 || len(args) < 2 {
				return usageError(cmd, "put the command after --, e.g. `pyro run debian:12 -- uname -a`")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			o.Environment, o.Command = args[0], args[1:]
			a.streamTo(&o.OnOutput)
			if err := a.pullImageFirst(cmd.Context(), o.Environment); err != nil {
				return err
			}
			res, err := c.RunInVM(cmd.Context(), o)
			if err != nil {
				return err
			}
			a.exitCode = res.ExitCode
			return a.emit(res, func(io.Writer) {
				for _, w := range res.Warnings {
					fmt.Fprintf(a.stderr, "pyro: warning: %s\n", w)
				}
				printDenials(a.stderr, "pyro: ", res.NetworkDenials)
				if res.StdoutTruncated || res.StderrTruncated {
					fmt.Fprintf(a.stderr, "pyro: output truncated (stdout %v, stderr %v)\n", res.StdoutTruncated, res.StderrTruncated)
				}
				if res.TimedOut {
					fmt.Fprintf(a.stderr, "pyro: command timed out after %d s and was killed\n", o.TimeoutSeconds)
				}
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.VCPUCount, "vcpu-count", pyro.DefaultVCPUCount, "number of guest vCPUs")
	f.IntVar(&o.MemMiB, "mem-mib", pyro.DefaultMemMiB, "guest memory in MiB")
	f.IntVar(&o.TimeoutSeconds, "timeout-seconds", pyro.DefaultTimeoutSeconds, "kill the command (its whole process group) after this many seconds")
	f.IntVar(&o.TTLSeconds, "ttl-seconds", 0, "bound the VM's whole life, boot included (0: no bound)")
	f.BoolVar(&o.Network, "network", false, "give the guest outbound networking (same as --network-policy egress); off by default: no NIC at all")
	networkFlags(f, &o.NetworkPolicy, &o.AllowHosts)
	f.BoolVar(&o.AllowHostCompat, "allow-host-compat", false, "when no guest can boot, run on the host in Linux namespaces (weaker isolation)")
	return cmd
}
