package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
)

// pullImageFirst pulls an image environment that is not cached yet before a
// run or create, so that the pull shows its progress on stderr in human
// mode (the SDK would pull it silently). Catalog names and cached images
// pass through untouched.
func (a *app) pullImageFirst(ctx context.Context, name string) error {
	if !pyro.IsImageReference(name) {
		return nil
	}
	if e, err := a.sdk.InspectEnvironment(ctx, name); err == nil && e.Installed {
		return nil
	}
	var o pyro.PullOptions
	var p *pullProgress
	if !a.json {
		p = newPullProgress(a.stderr)
		o.Progress = p.update
	}
	_, err := a.sdk.PullEnvironment(ctx, name, o)
	if p != nil {
		p.finish()
	}
	return err
}

func (a *app) envPushCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "push ENVIRONMENT REFERENCE",
		Short: "Publish an installed catalog environment to an OCI registry",
		Long: `Publishes ENVIRONMENT (kernel, root filesystem, manifest) as an OCI artifact
at REFERENCE. Other hosts then get it with ` + "`pyro env pull --registry REGISTRY NAME`" + `
(or $PYRO_REGISTRY), digest-checked, instead of building it from Debian packages.
By convention REFERENCE is REGISTRY/NAME. Credentials come from
~/.docker/config.json and its credential helpers (docker login).`,
		Example: "  pyro env push debian:12 localhost:5000/pyro/debian:12\n  pyro env push --json debian:12-base registry.example.com/pyro/debian:12-base",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var o pyro.PushOptions
			var p *pullProgress
			if !a.json {
				p = newPullProgress(a.stderr)
				o.Progress = p.update
			}
			res, err := a.sdk.PushEnvironment(cmd.Context(), args[0], args[1], o)
			if p != nil {
				p.finish()
			}
			if err != nil {
				return err
			}
			return a.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "pushed %s to %s@%s in %.1f s (environment digest %s)\n", args[0], res.Reference, res.Digest,
					float64(res.DurationMS)/1000, res.EnvironmentDigest)
			})
		},
	}
}
