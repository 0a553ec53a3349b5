package cli

import "github.com/spf13/cobra"

func (a *app) serviceCommand() *cobra.Command {
	return &cobra.Command{Use: "service", Short: "Manage long-running named services in a workspace"}
}

func (a *app) shellCommand() *cobra.Command {
	return &cobra.Command{Use: "shell", Short: "Persistent PTY shells in a workspace"}
}
