package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func (a *app) doctorCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run pyro guests, with a fix for each problem",
		Long: `Checks the VMM binary and version, KVM (with a real probe boot, cached per
host boot), TCG, the environment build tools, the state directory, free disk
and installed environments, and removes (and counts) what interrupted runs
left behind. Exits non-zero when a check fails.`,
		Example: "  pyro doctor\n  pyro doctor --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.sdk
			r, err := c.Doctor(cmd.Context())
			if err != nil {
				return err
			}
			if err := a.emit(r, func(w io.Writer) {
				for _, ch := range r.Checks {
					fmt.Fprintf(w, "%-4s  %-15s %s\n", ch.Status, ch.Name, ch.Detail)
					if ch.Hint != "" && ch.Status != "ok" {
						fmt.Fprintf(w, "      %-15s fix: %s\n", "", ch.Hint)
					}
				}
			}); err != nil {
				return err
			}
			if !r.OK {
				a.exitCode = errdefs.ExitCode(errdefs.ErrFailedPrecondition)
			}
			return nil
		},
	}
}
