// Package cli is pyro's command line. It parses flags, calls the SDK and
// renders results: human-readable by default, one JSON object with --json.
// Only this package (and main) prints or chooses an exit code.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

// app carries what every command needs.
type app struct {
	json   bool
	stdout io.Writer
	stderr io.Writer
	// exitCode lets `run` pass the guest command's exit code through.
	exitCode int
	// sdk is the client every command uses, made before the command runs.
	sdk *pyro.Client
	// watchParent, when set, is called to cancel a command of
	// watchParentOf whose parent process exited.
	watchParent context.CancelCauseFunc
}

// Main runs the CLI with args and returns the process exit code.
func Main(args []string) int {
	nohup := hangupsIgnored()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	stop := watchSignals(cancel, nohup)
	defer stop()
	a := &app{
		stdout: &brokenPipeWriter{w: os.Stdout, name: "stdout", cancel: cancel},
		stderr: &brokenPipeWriter{w: os.Stderr, name: "stderr", cancel: cancel},
	}
	if !nohup {
		a.watchParent = cancel
	}
	root := a.rootCommand()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	i, interrupted := interruptedBy(ctx)
	if err != nil {
		if interrupted && errors.Is(err, context.Canceled) {
			err = fmt.Errorf("%w: %w", i, err)
		}
		a.printError(err)
	}
	if interrupted {
		// Even a command that finished was cut short when its output
		// could not be written.
		return i.exitCode()
	}
	if err != nil {
		return errdefs.ExitCode(err)
	}
	return a.exitCode
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "pyro",
		Short: "Run AI agents' commands in disposable Linux microVMs",
		Long: `pyro gives AI agents a safe place to run code: disposable Linux microVMs
(QEMU microvm, KVM when available, TCG otherwise), driven from this CLI, a Go SDK,
a Python SDK and an MCP server.

State lives in $PYRO_HOME (default ~/.local/share/pyro).`,
		Example: `  pyro env pull debian:12
  pyro run debian:12 -- uname -a
  pyro run --json debian:12-base -- sh -c 'echo hi; exit 3'
  pyro doctor`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
	}
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print one JSON object instead of human-readable text")
	// Every command talks to the SDK; make the client once, before any runs.
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if a.watchParent != nil && watchParentOf[cmd.CommandPath()] {
			watchParent(cmd.Context(), a.watchParent)
		}
		if cmd.Name() == "help" || strings.HasPrefix(cmd.CommandPath(), "pyro completion") {
			return nil // no state needed
		}
		var err error
		a.sdk, err = a.client()
		return err
	}
	root.AddCommand(a.runCommand(), a.envCommand(), a.vmCommand(), a.workspaceCommand(), a.doctorCommand(), a.mcpCommand(), a.demoCommand(), a.prepareCommand(), a.poolCommand())
	root.AddCommand(a.hostCommand())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return errdefs.Wrap(errdefs.ErrInvalidArgument, err, "see `pyro COMMAND --help`", "bad flags")
	})
	return root
}

func (a *app) client() (*pyro.Client, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	opts := pyro.Options{Binary: self}
	// PYRO_LOG=debug shows what the SDK does (boot steps and their times).
	if os.Getenv("PYRO_LOG") == "debug" {
		opts.Logger = slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return pyro.New(opts)
}

// emit prints v as JSON in --json mode, else calls human.
func (a *app) emit(v any, human func(w io.Writer)) error {
	if a.json {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	human(a.stdout)
	return nil
}

// printError reports err on stderr, and also as JSON on stdout in --json mode
// so that a caller parsing stdout always gets an object.
func (a *app) printError(err error) {
	if a.json {
		_ = json.NewEncoder(a.stdout).Encode(map[string]any{
			"error": map[string]string{"message": err.Error(), "category": errdefs.CategoryName(err)},
		})
	}
	var i *interruption
	if errors.As(err, &i) {
		fmt.Fprintf(a.stderr, "pyro: %v\n", i)
		return
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(a.stderr, "pyro: interrupted")
		return
	}
	// Errors can quote the guest (console tails, names): no terminal
	// control sequence from it reaches the terminal.
	fmt.Fprintf(a.stderr, "pyro: %s\n", termtext.Clean(err.Error()))
}

// usageError is an invalid-argument error with the command's usage as hint.
func usageError(cmd *cobra.Command, format string, args ...any) error {
	return errdefs.New(errdefs.ErrInvalidArgument, "usage: "+cmd.UseLine(), format, args...)
}

// version is the module version, or the VCS revision of a development build.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " (" + s.Value[:12] + ")"
		}
	}
	return v
}
