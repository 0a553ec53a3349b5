package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

// vmCommand is the SDK's VM lifecycle on the command line. `pyro run` is
// the one-shot form; these keep a VM across calls.
func (a *app) vmCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Create, start, exec in, stop and delete VMs that outlive one command",
		Long: `A VM lives under its own supervisor process until stopped, deleted or expired
(--ttl-seconds). Status is observed, never assumed: created, starting, running,
stopped, expired or broken (with the reason).

start and stop are idempotent; delete of an unknown id fails with "not found".
exec runs one command and then deletes the VM (auto-clean).`,
		Example: `  id=$(pyro vm create --json debian:12 | jq -r .vm_id)
  pyro vm start $id
  pyro vm exec $id -- uname -a      # deletes the VM afterwards
  pyro vm list
  pyro vm reap                      # delete expired and broken VMs`,
	}
	cmd.AddCommand(a.vmCreateCommand(), a.vmIDCommand("start", "Boot a created or stopped VM", (*pyro.Client).StartVM),
		a.vmExecCommand(), a.vmIDCommand("stop", "Power a VM off (files stay)", (*pyro.Client).StopVM),
		a.vmDeleteCommand(), a.vmIDCommand("status", "Show a VM's observed status", (*pyro.Client).StatusVM),
		a.vmListCommand(), a.vmNetworkCommand(), a.vmReapCommand())
	return cmd
}

func (a *app) vmCreateCommand() *cobra.Command {
	var o pyro.CreateVMOptions
	var start bool
	cmd := &cobra.Command{
		Use:     "create [ENVIRONMENT]",
		Short:   "Record a VM (and boot it with --start)",
		Example: "  pyro vm create debian:12\n  pyro vm create --start --ttl-seconds 600 --network debian:12",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			if len(args) == 1 {
				o.Environment = args[0]
			}
			if err := a.pullImageFirst(cmd.Context(), o.Environment); err != nil {
				return err
			}
			v, err := c.CreateVM(cmd.Context(), o)
			if err == nil && start {
				id := v.VMID
				if v, err = c.StartVM(cmd.Context(), id); err != nil && cmd.Context().Err() != nil {
					// Interrupted half-way: leave no VM the caller never learnt of.
					_, _ = c.DeleteVM(context.WithoutCancel(cmd.Context()), id)
				}
			}
			if err != nil {
				return err
			}
			return a.emit(v, func(w io.Writer) { printVM(w, v) })
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.VCPUCount, "vcpu-count", pyro.DefaultVCPUCount, "number of guest vCPUs")
	f.IntVar(&o.MemMiB, "mem-mib", pyro.DefaultMemMiB, "guest memory in MiB")
	f.IntVar(&o.TTLSeconds, "ttl-seconds", 0, "stop the VM this many seconds after creation (0: never)")
	f.BoolVar(&o.Network, "network", false, "outbound networking (same as --network-policy egress)")
	networkFlags(f, &o.NetworkPolicy, &o.AllowHosts)
	f.BoolVar(&o.AllowHostCompat, "allow-host-compat", false, "fall back to host namespaces when no guest can boot")
	f.BoolVar(&start, "start", false, "boot it right away")
	return cmd
}

func (a *app) vmIDCommand(name, short string, call func(*pyro.Client, context.Context, string) (pyro.VM, error)) *cobra.Command {
	return &cobra.Command{
		Use:     name + " VM_ID",
		Short:   short,
		Example: fmt.Sprintf("  pyro vm %s 3f2a9c1b7d4e", name),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			v, err := call(c, cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(v, func(w io.Writer) { printVM(w, v) })
		},
	}
}

func (a *app) vmExecCommand() *cobra.Command {
	var o pyro.ExecOptions
	cmd := &cobra.Command{
		Use:   "exec VM_ID [--timeout-seconds N] -- COMMAND [ARG...]",
		Short: "Run one command in a running VM, then delete the VM",
		Long: `Runs COMMAND in a running VM, streams its output and exits with its exit code
(--json: one result object). The VM is deleted afterwards (auto-clean).`,
		Example: "  pyro vm exec 3f2a9c1b7d4e -- python3 -c 'print(42)'",
		Args:    commandArgs(1, "VM_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			o.Command = args[1:]
			a.streamTo(&o.OnOutput)
			res, err := c.ExecVM(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			return a.execResult(res)
		},
	}
	cmd.Flags().IntVar(&o.TimeoutSeconds, "timeout-seconds", pyro.DefaultTimeoutSeconds, "kill the command's process group after this many seconds")
	return cmd
}

// commandArgs requires n positional args before -- and a command after it.
func commandArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if cmd.ArgsLenAtDash() != n || len(args) <= n {
			return usageError(cmd, "give %s, then the command after --", names)
		}
		return nil
	}
}

// streamTo makes human mode stream guest output as it arrives.
func (a *app) streamTo(f *func(string, []byte)) {
	if a.json {
		return
	}
	*f = func(stream string, p []byte) {
		// A write that fails with EPIPE interrupts the command (see
		// brokenPipeWriter); other write errors cannot be reported better.
		if stream == "stderr" {
			_, _ = a.stderr.Write(p)
		} else {
			_, _ = a.stdout.Write(p)
		}
	}
}

// execResult ends an exec command: JSON result or notes, and the guest's
// exit code as pyro's.
func (a *app) execResult(res pyro.ExecResult) error {
	a.exitCode = res.ExitCode
	return a.emit(res, func(io.Writer) {
		if res.StdoutTruncated || res.StderrTruncated {
			fmt.Fprintf(a.stderr, "pyro: output truncated (stdout %v, stderr %v)\n", res.StdoutTruncated, res.StderrTruncated)
		}
		if res.TimedOut {
			fmt.Fprintln(a.stderr, "pyro: command timed out and was killed")
		}
		printDenials(a.stderr, "pyro: ", res.NetworkDenials)
	})
}

func (a *app) vmDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "delete VM_ID",
		Short:   "Stop a VM if needed and remove all its files",
		Example: "  pyro vm delete 3f2a9c1b7d4e",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			r, err := c.DeleteVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) { fmt.Fprintf(w, "deleted vm %s (was %s)\n", r.VMID, r.PriorState) })
		},
	}
}

func (a *app) vmListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List VMs with their observed status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.sdk
			vms, err := c.ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			if vms == nil {
				vms = []pyro.VM{}
			}
			return a.emit(map[string]any{"vms": vms}, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VM_ID\tENVIRONMENT\tSTATE\tVCPU\tMEM_MIB\tCREATED")
				for _, v := range vms {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", v.VMID, v.Environment, v.State, v.VCPUCount, v.MemMiB, v.CreatedAt.Format("2006-01-02 15:04:05"))
				}
				tw.Flush()
			})
		},
	}
}

func (a *app) vmNetworkCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "network VM_ID",
		Short: "Show a VM's network: policy, guest address, gateway, DNS, MAC, published ports",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			n, err := c.NetworkInfoVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(n, func(w io.Writer) {
				if !n.Enabled {
					fmt.Fprintf(w, "vm %s: networking off (no NIC)\n", n.VMID)
					return
				}
				fmt.Fprintf(w, "mode:    %s\npolicy:  %s %s\naddress: %s/%d on %s\ngateway: %s\ndns:     %s\nmac:     %s\n", n.Mode, n.NetworkPolicy, strings.Join(n.AllowHosts, " "), n.GuestIP, n.Prefix, n.Interface, n.Gateway, n.DNS, n.MAC)
				for _, p := range n.PublishedPorts {
					fmt.Fprintf(w, "published: %s:%d -> guest port %d\n", p.HostAddress, p.HostPort, p.GuestPort)
				}
			})
		},
	}
}

func (a *app) vmReapCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "reap",
		Short: "Delete expired VMs and VMs whose supervisor died",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.sdk
			r, err := c.ReapExpired(cmd.Context())
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				for _, d := range r.Removed {
					fmt.Fprintf(w, "removed vm %s (%s)\n", d.VMID, d.PriorState)
				}
				fmt.Fprintf(w, "%d removed\n", r.Count)
			})
		},
	}
}

func printVM(w io.Writer, v pyro.VM) {
	fmt.Fprintf(w, "vm_id:       %s\nenvironment: %s\nstate:       %s\n", v.VMID, v.Environment, v.State)
	if v.Reason != "" {
		fmt.Fprintf(w, "reason:      %s\n", termtext.Clean(v.Reason))
	}
	fmt.Fprintf(w, "resources:   %d vCPU, %d MiB, network %s\n", v.VCPUCount, v.MemMiB, policyText(v.NetworkPolicy, v.AllowHosts))
	if v.Backend != "" {
		fmt.Fprintf(w, "backend:     %s (%s), booted in %d ms\n", v.Backend, v.Acceleration, v.BootMS)
	}
	if v.ExpiresAt != nil {
		fmt.Fprintf(w, "expires:     %s\n", v.ExpiresAt.Format("2006-01-02 15:04:05Z07:00"))
	}
}
