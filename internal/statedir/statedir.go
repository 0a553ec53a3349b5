// Package statedir resolves where pyro keeps its state and names the
// top-level directories in it. Nothing else builds these paths by hand.
package statedir

import (
	"os"
	"path/filepath"
)

// Root returns $PYRO_HOME, else $XDG_DATA_HOME/pyro, else ~/.local/share/pyro.
func Root() string {
	if d := os.Getenv("PYRO_HOME"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "pyro")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = "/root"
	}
	return filepath.Join(home, ".local", "share", "pyro")
}

// Dirs are the well-known subdirectories of a state root.
type Dirs struct{ Root string }

func (d Dirs) Environments() string { return filepath.Join(d.Root, "environments") }
func (d Dirs) Cache() string        { return filepath.Join(d.Root, "cache") }
func (d Dirs) VMs() string          { return filepath.Join(d.Root, "vms") }
func (d Dirs) Workspaces() string   { return filepath.Join(d.Root, "workspaces") }
