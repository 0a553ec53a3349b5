package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pyro-mcp/pyro"
)

func (a *app) envCommand() *cobra.Command {
	env := &cobra.Command{
		Use:   "env",
		Short: "List, pull, inspect and prune guest environments",
		Long: `Environments are a kernel plus a root filesystem image, built locally from
Debian packages on first pull (or fetched from $PYRO_REGISTRY) and cached in
$PYRO_HOME/environments. Any OCI image works too: a name with a "/" or "@", or
oci-archive:PATH / docker-archive:PATH, is an image reference (Docker Hub's
python is docker.io/library/python:3.12-slim); "debian:12" is a catalog name.`,
	}
	env.AddCommand(a.envListCommand(), a.envPullCommand(), a.envInspectCommand(), a.envPruneCommand(), a.envPushCommand())
	return env
}

func (a *app) envListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List the catalog and what is installed",
		Example: "  pyro env list\n  pyro env list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.sdk
			envs, err := c.ListEnvironments(cmd.Context())
			if err != nil {
				return err
			}
			return a.emit(map[string]any{"environments": envs}, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tVERSION\tSTATE\tSIZE\tDESCRIPTION")
				for _, e := range envs {
					name := e.Name
					if e.Default {
						name += " (default)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, e.Version, envState(e), humanBytes(e.SizeBytes), e.Description)
				}
				tw.Flush()
			})
		},
	}
}

func envState(e pyro.Environment) string {
	switch {
	case e.Damaged != "":
		return "damaged"
	case e.Installed:
		return "installed"
	}
	return "not installed"
}

func (a *app) envPullCommand() *cobra.Command {
	var o pyro.PullOptions
	var po pyro.PrepareOptions
	var warm bool
	cmd := &cobra.Command{
		Use:   "pull ENVIRONMENT",
		Short: "Install an environment (from a registry, a local build, or an OCI image)",
		Long: `Installs ENVIRONMENT. A second pull of an intact install is a fast no-op; a
damaged or half-written one is detected and rebuilt. Ctrl-C leaves nothing
partial behind. A catalog environment is fetched from --registry or
$PYRO_REGISTRY when set (REGISTRY/NAME, pushed by ` + "`pyro env push`" + `, digest-checked),
else (or when that fails, with a note) built locally; the Debian mirror comes
from --mirror, $PYRO_DEBIAN_MIRROR or the host's apt sources. An image
reference (docker.io/library/python:3.12-slim, oci-archive:PATH,
docker-archive:PATH) is resolved to its linux/amd64 manifest, downloaded and
converted; the cache is keyed by manifest digest, capped by
$PYRO_MAX_IMAGE_BYTES (default 8 GiB).`,
		Example: "  pyro env pull debian:12\n  pyro env pull --force debian:12-base\n  pyro env pull --registry localhost:5000/pyro debian:12\n  pyro env pull docker.io/library/python:3.12-slim\n  pyro env pull --warm debian:12",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			p := newPullProgress(a.stderr)
			o.Progress = p.update
			res, err := c.PullEnvironment(cmd.Context(), args[0], o)
			p.finish()
			if err != nil {
				return err
			}
			if warm {
				// --warm: the memory snapshot too (internal/cli/warm.go).
				pr, err := c.PrepareEnvironment(cmd.Context(), args[0], po)
				if err != nil {
					return err
				}
				res.Warm = &pr
			}
			return a.emit(res, func(w io.Writer) {
				if res.Warm != nil {
					defer printPrepared(w, *res.Warm)
				}
				switch {
				case res.AlreadyInstalled:
					fmt.Fprintf(w, "%s %s is already installed and intact (%s)\n", res.Environment.Name, res.Environment.Version, res.Environment.Path)
				default:
					verb := "installed"
					if res.Rebuilt {
						verb = "rebuilt"
					}
					fmt.Fprintf(w, "%s %s %s in %.1f s (%s, %s)\n", res.Environment.Name, res.Environment.Version, verb,
						float64(res.DurationMS)/1000, humanBytes(res.Environment.SizeBytes), res.Environment.Path)
				}
			})
		},
	}
	cmd.Flags().StringVar(&o.Mirror, "mirror", "", "Debian mirror URL for local builds")
	cmd.Flags().BoolVar(&o.Force, "force", false, "rebuild even an intact install")
	cmd.Flags().StringVar(&o.Registry, "registry", "", "fetch catalog environments from REGISTRY/NAME before building locally (default $PYRO_REGISTRY)")
	cmd.Flags().BoolVar(&warm, "warm", false, "also build the memory snapshot that makes starts warm (see `pyro prepare`; its flags choose the configuration)")
	addPrepareFlags(cmd, &po)
	return cmd
}

// pullProgress draws a bar per phase on a terminal and prints one line per
// phase otherwise (CI logs, pipes).
type pullProgress struct {
	w     io.Writer
	tty   bool
	phase string
	bar   *progressbar.ProgressBar
}

func newPullProgress(w io.Writer) *pullProgress {
	f, ok := w.(interface{ Fd() uintptr }) // *os.File or brokenPipeWriter
	return &pullProgress{w: w, tty: ok && term.IsTerminal(int(f.Fd()))}
}

func (p *pullProgress) update(e pyro.PullProgress) {
	if e.Phase == "note" {
		p.finish()
		p.phase = ""
		fmt.Fprintf(p.w, "pyro: note: %s\n", e.Message)
		return
	}
	if e.Phase != p.phase {
		p.finish()
		p.phase = e.Phase
		msg := e.Message
		if msg == "" {
			msg = e.Phase
		}
		if !p.tty {
			fmt.Fprintf(p.w, "pyro: %s: %s\n", e.Phase, msg)
			return
		}
		total := e.Total
		if total <= 0 {
			total = -1 // spinner
		}
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(p.w), progressbar.OptionSetDescription(fmt.Sprintf("%-8s %s", e.Phase, truncate(msg, 40))),
			progressbar.OptionShowBytes(e.Total > 0), progressbar.OptionClearOnFinish(), progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100_000_000))
	}
	if p.bar != nil {
		if e.Total > 0 {
			_ = p.bar.Set64(e.Done)
		} else {
			_ = p.bar.Add(1)
		}
	}
}

func (p *pullProgress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
		fmt.Fprintf(p.w, "pyro: %s done\n", p.phase)
		p.bar = nil
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func (a *app) envInspectCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "inspect ENVIRONMENT",
		Short:   "Show an environment's manifest, install state, paths and sizes",
		Example: "  pyro env inspect debian:12\n  pyro env inspect --json debian:12-base",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := a.sdk
			e, err := c.InspectEnvironment(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(e, func(w io.Writer) {
				fmt.Fprintf(w, "name:        %s\nversion:     %s\ndescription: %s\npackages:    %s\nstate:       %s\n",
					e.Name, e.Version, e.Description, strings.Join(e.Packages, " "), envState(e))
				if e.Damaged != "" {
					fmt.Fprintf(w, "damage:      %s (run `pyro env pull %s` to rebuild)\n", e.Damaged, e.Name)
				}
				if e.Path != "" {
					fmt.Fprintf(w, "path:        %s\nsize:        %s\n", e.Path, humanBytes(e.SizeBytes))
				}
				if m := e.Manifest; m != nil {
					fmt.Fprintf(w, "kernel:      %s (%s)\nbuilt:       %s with %s from %s\ndigest:      %s\nfiles:\n",
						m.Kernel.Release, m.Kernel.Package, m.BuiltAt.Format("2006-01-02 15:04:05Z07:00"), m.BuildTool, m.Mirror, m.Digest)
					for _, name := range []string{"vmlinux", "rootfs.ext4"} {
						if f, ok := m.Files[name]; ok {
							fmt.Fprintf(w, "  %-12s %9s  sha256:%s\n", name, humanBytes(f.Size), f.SHA256)
						}
					}
					fmt.Fprintf(w, "  modules      %d files\n", len(m.Modules))
				}
				if e.Installed {
					printSnapshots(w, e.GoldenSnapshots)
				}
				if !e.Installed {
					fmt.Fprintf(w, "install it with: pyro env pull %s\n", e.Name)
				}
			})
		},
	}
}

func (a *app) envPruneCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "prune",
		Short:   "Remove partial builds, old versions and environments the catalog no longer has",
		Example: "  pyro env prune\n  pyro env prune --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.sdk
			r, err := c.PruneEnvironments(cmd.Context())
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				for _, it := range r.Removed {
					fmt.Fprintf(w, "removed %s (%s, %s)\n", it.Path, it.Reason, humanBytes(it.Bytes))
				}
				fmt.Fprintf(w, "freed %s\n", humanBytes(r.FreedBytes))
			})
		},
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
