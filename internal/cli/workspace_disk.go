package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// `pyro workspace disk export|list|read`: a stopped workspace's /workspace
// read from its disk images on the host, without booting it.

func (a *app) wsDiskCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "disk", Short: "Read a stopped workspace's /workspace from its disk image, without booting it"}
	cmd.AddCommand(a.wsDiskExport(), a.wsDiskList(), a.wsDiskRead())
	return cmd
}

func (a *app) wsDiskExport() *cobra.Command {
	var output string
	var o pyro.ExportOptions
	cmd := &cobra.Command{
		Use:   "export WORKSPACE_ID --output HOST_PATH [--overwrite]",
		Short: "Write a stopped workspace's /workspace as a raw ext4 image",
		Example: `  pyro workspace stop $id
  pyro workspace disk export $id --output ./workspace.ext4
  debugfs -R 'ls -l /' ./workspace.ext4`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := a.sdk.ExportWorkspaceDisk(cmd.Context(), args[0], output, &o)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				fmt.Fprintf(w, "exported /workspace of %s to %s (ext4, %d files, %s of content)\n", r.WorkspaceID, r.OutputPath, r.FileCount, humanBytes(r.Bytes))
			})
		},
	}
	cmd.Flags().StringVar(&output, "output", "", "host path of the image (must not exist unless --overwrite)")
	cmd.Flags().BoolVar(&o.Overwrite, "overwrite", false, "replace an existing output file")
	_ = cmd.MarkFlagRequired("output")
	return cmd
}

func (a *app) wsDiskList() *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:     "list WORKSPACE_ID [PATH] [--recursive]",
		Short:   "List a directory of a stopped workspace's /workspace",
		Example: "  pyro workspace disk list $id src --recursive",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := ""
			if len(args) == 2 {
				path = args[1]
			}
			l, err := a.sdk.ListWorkspaceDisk(cmd.Context(), args[0], path, recursive)
			if err != nil {
				return err
			}
			return a.emit(l, func(w io.Writer) { printFileList(w, l) })
		},
	}
	cmd.Flags().BoolVar(&recursive, "recursive", false, "list everything below PATH")
	return cmd
}

func (a *app) wsDiskRead() *cobra.Command {
	var o pyro.ReadWorkspaceFileOptions
	var contentOnly bool
	cmd := &cobra.Command{
		Use:     "read WORKSPACE_ID PATH [--max-bytes N] [--content-only]",
		Short:   "Print a text file of a stopped workspace's /workspace",
		Example: "  pyro workspace disk read $id build.log --max-bytes 4096",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("max-bytes") && o.MaxBytes < 1 {
				return errdefs.New(errdefs.ErrInvalidArgument, fmt.Sprintf("use 1..%d", pyro.MaxReadBytes), "--max-bytes must be at least 1")
			}
			f, err := a.sdk.ReadWorkspaceDisk(cmd.Context(), args[0], args[1], &o)
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
