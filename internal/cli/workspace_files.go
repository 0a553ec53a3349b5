package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/termtext"
)

// `pyro workspace file list|read|write` and `pyro workspace patch apply`.

func (a *app) wsFileCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "file", Short: "List, read and write single files in /workspace"}
	cmd.AddCommand(a.wsFileList(), a.wsFileRead(), a.wsFileWrite())
	return cmd
}

func (a *app) wsPatchCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "patch", Short: "Apply unified diffs to /workspace"}
	cmd.AddCommand(a.wsPatchApply())
	return cmd
}

func (a *app) wsFileList() *cobra.Command {
	return a.fileListCommand("List a directory of /workspace (symlinks are listed, not followed)", `  pyro workspace file list $id
  pyro workspace file list $id src --recursive --json`, (*pyro.Client).ListWorkspaceFiles)
}

func (a *app) wsFileRead() *cobra.Command {
	return a.fileReadCommand("Print a text file of /workspace (up to --max-bytes)", `  pyro workspace file read $id src/app.py
  pyro workspace file read $id build.log --max-bytes 4096 --content-only
  pyro workspace file read $id logo.png --base64 --json`, (*pyro.Client).ReadWorkspaceFile)
}

// fileListCommand is `file list` and `disk list`: the same arguments and
// output over the running guest or the stopped workspace's image. The SDK
// call is a method expression: a.sdk is made only when the command runs.
func (a *app) fileListCommand(short, example string, list func(c *pyro.Client, ctx context.Context, id, path string, recursive bool) (pyro.WorkspaceFileList, error)) *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:     "list WORKSPACE_ID [PATH] [--recursive]",
		Short:   short,
		Example: example,
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := ""
			if len(args) == 2 {
				path = args[1]
			}
			l, err := list(a.sdk, cmd.Context(), args[0], path, recursive)
			if err != nil {
				return err
			}
			return a.emit(l, func(w io.Writer) { printFileList(w, l) })
		},
	}
	cmd.Flags().BoolVar(&recursive, "recursive", false, "list everything below PATH")
	return cmd
}

// fileReadCommand is `file read` and `disk read` (see fileListCommand).
func (a *app) fileReadCommand(short, example string, read func(c *pyro.Client, ctx context.Context, id, path string, o *pyro.ReadWorkspaceFileOptions) (pyro.WorkspaceFile, error)) *cobra.Command {
	var o pyro.ReadWorkspaceFileOptions
	var contentOnly bool
	cmd := &cobra.Command{
		Use:     "read WORKSPACE_ID PATH [--max-bytes N] [--content-only]",
		Short:   short,
		Example: example,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("max-bytes") && o.MaxBytes < 1 {
				return errdefs.New(errdefs.ErrInvalidArgument, fmt.Sprintf("use 1..%d", pyro.MaxReadBytes), "--max-bytes must be at least 1")
			}
			f, err := read(a.sdk, cmd.Context(), args[0], args[1], &o)
			if err != nil {
				return err
			}
			return a.emit(f, func(w io.Writer) { printFileRead(w, f, o.Base64, contentOnly) })
		},
	}
	cmd.Flags().Int64Var(&o.MaxBytes, "max-bytes", pyro.DefaultReadMaxBytes, fmt.Sprintf("return at most this many bytes (1..%d)", pyro.MaxReadBytes))
	cmd.Flags().BoolVar(&contentOnly, "content-only", false, "print only the content, nothing around it")
	cmd.Flags().BoolVar(&o.Base64, "base64", false, "return the bytes base64-encoded (for binary files)")
	return cmd
}

// maxTextFile bounds what --text-file and --patch-file read.
const maxTextFile = pyro.MaxWriteBytes

// readTextArg returns --text, or the content of --text-file ("-" is stdin).
func readTextArg(cmd *cobra.Command, textFlag, fileFlag, text, file string) (string, error) {
	hasText, hasFile := cmd.Flags().Changed(textFlag), cmd.Flags().Changed(fileFlag)
	if hasText == hasFile {
		return "", errdefs.New(errdefs.ErrInvalidArgument, "usage: "+cmd.UseLine(), "pass exactly one of --%s and --%s", textFlag, fileFlag)
	}
	if hasText {
		return text, nil
	}
	var r io.Reader = cmd.InOrStdin()
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return "", errdefs.Wrap(errdefs.ErrNotFound, err, "", "--%s", fileFlag)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxTextFile+1))
	if err != nil {
		return "", errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "read --%s", fileFlag)
	}
	if len(b) > maxTextFile {
		return "", errdefs.New(errdefs.ErrInvalidArgument, "use `pyro workspace sync push` for large files", "--%s is larger than %d bytes", fileFlag, maxTextFile)
	}
	return string(b), nil
}

func (a *app) wsFileWrite() *cobra.Command {
	var text, textFile string
	cmd := &cobra.Command{
		Use:   "write WORKSPACE_ID PATH (--text TEXT | --text-file FILE)",
		Short: "Create or replace a file of /workspace (atomically; parents are created)",
		Example: `  pyro workspace file write $id notes.md --text '# notes'
  pyro workspace file write $id src/app.py --text-file ./app.py
  generate | pyro workspace file write $id out.txt --text-file -`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			content, err := readTextArg(cmd, "text", "text-file", text, textFile)
			if err != nil {
				return err
			}
			r, err := a.sdk.WriteWorkspaceFile(cmd.Context(), args[0], args[1], content)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				verb := "wrote"
				switch {
				case r.Created:
					verb = "created"
				case !r.Changed:
					verb = "unchanged:"
				}
				fmt.Fprintf(w, "%s %s (%s)\n", verb, termtext.Line(r.Path), humanBytes(r.BytesWritten))
			})
		},
	}
	cmd.Flags().StringVar(&text, "text", "", "the new content")
	cmd.Flags().StringVar(&textFile, "text-file", "", "host file holding the new content (- for stdin)")
	return cmd
}

func (a *app) wsPatchApply() *cobra.Command {
	var text, file string
	cmd := &cobra.Command{
		Use:   "apply WORKSPACE_ID (--patch TEXT | --patch-file FILE)",
		Short: "Apply a unified diff to /workspace, all or nothing",
		Long: `Apply a unified diff (from git diff or diff -u; paths relative to /workspace,
a/ and b/ prefixes allowed) to /workspace. The patch is parsed and every hunk is
checked against the current files before anything is written: either every file
is changed or none is. A hunk that does not match is an error naming it.`,
		Example: `  git diff > fix.patch && pyro workspace patch apply $id --patch-file fix.patch
  pyro workspace patch apply $id --patch "$(cat fix.patch)" --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := readTextArg(cmd, "patch", "patch-file", text, file)
			if err != nil {
				return err
			}
			r, err := a.sdk.ApplyWorkspacePatch(cmd.Context(), args[0], p)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				for _, f := range r.Files {
					mark := map[string]string{"create": "A", "modify": "M", "delete": "D"}[f.Action]
					if !f.Changed {
						mark = "="
					}
					fmt.Fprintf(w, "%s %s\n", mark, termtext.Line(f.Path))
				}
				fmt.Fprintf(w, "patched %d file(s)\n", r.FileCount)
			})
		},
	}
	cmd.Flags().StringVar(&text, "patch", "", "the unified diff")
	cmd.Flags().StringVar(&file, "patch-file", "", "host file holding the unified diff (- for stdin)")
	return cmd
}

func printFileList(w io.Writer, l pyro.WorkspaceFileList) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, e := range l.Entries {
		name := termtext.Line(e.Path)
		if e.LinkTarget != "" {
			name += " -> " + termtext.Line(e.LinkTarget)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Type, e.Mode, humanBytes(e.SizeBytes), name)
	}
	tw.Flush()
	if l.Truncated {
		fmt.Fprintf(w, "(listing stopped after %d entries)\n", len(l.Entries))
	}
}

func printFileRead(w io.Writer, f pyro.WorkspaceFile, asBase64, contentOnly bool) {
	body := f.Content
	if asBase64 {
		body = f.ContentBase64 + "\n"
	}
	if contentOnly {
		// The bytes as they are for a pipe or a file; on a terminal no
		// guest escape sequence gets through.
		if fd, ok := w.(interface{ Fd() uintptr }); ok && term.IsTerminal(int(fd.Fd())) {
			body = termtext.Clean(body)
		}
		fmt.Fprint(w, body)
		return
	}
	fmt.Fprintf(w, "%s (%s", termtext.Line(f.Path), humanBytes(f.SizeBytes))
	if f.Truncated {
		fmt.Fprintf(w, ", first %s", humanBytes(f.MaxBytes))
	}
	fmt.Fprintln(w, ")")
	fmt.Fprint(w, termtext.Clean(body))
	if len(body) > 0 && body[len(body)-1] != '\n' {
		fmt.Fprintln(w)
	}
}
