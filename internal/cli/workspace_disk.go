package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
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
	return a.fileListCommand("List a directory of a stopped workspace's /workspace", "  pyro workspace disk list $id src --recursive", (*pyro.Client).ListWorkspaceDisk)
}

func (a *app) wsDiskRead() *cobra.Command {
	return a.fileReadCommand("Print a text file of a stopped workspace's /workspace", "  pyro workspace disk read $id build.log --max-bytes 4096", (*pyro.Client).ReadWorkspaceDisk)
}
