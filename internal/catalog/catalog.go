// Package catalog lists the environments pyro knows how to provide. The names
// are stable; an entry's Version changes whenever its recipe changes, so an
// installed copy of an older version is known to be superseded.
package catalog

import (
	"slices"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Entry describes one environment of the catalog.
type Entry struct {
	Name        string   `json:"name"`        // "debian:12"
	Version     string   `json:"version"`     // bumped when the recipe changes
	Description string   `json:"description"` // one line for people
	Packages    []string `json:"packages"`    // Debian packages added over minbase
	Default     bool     `json:"default"`     // used when no environment is named
}

// DefaultName is the environment used when none is named.
const DefaultName = "debian:12"

// Suite and Arch are what every catalog environment is built from.
const (
	Suite = "bookworm"
	Arch  = "amd64"
)

var defaultPackages = []string{"bash", "coreutils", "python3", "curl", "git", "ca-certificates"}

var entries = []Entry{
	{
		Name:        "debian:12",
		Version:     "1.0.0",
		Description: "Debian 12 (bookworm) with bash, coreutils, python3, curl, git and CA certificates",
		Packages:    defaultPackages,
		Default:     true,
	},
	{
		Name:        "debian:12-base",
		Version:     "1.0.0",
		Description: "minimal Debian 12 (bookworm): minbase only",
		Packages:    []string{},
	},
	{
		Name:        "debian:12-build",
		Version:     "1.0.0",
		Description: "Debian 12 (bookworm) with build-essential, python3-pip/venv, git, make and pkg-config",
		Packages: uniq(append([]string{"build-essential", "python3-pip", "python3-venv", "git", "make", "pkg-config"},
			defaultPackages...)),
	},
}

// All returns every catalog entry, default first. The result is a copy.
func All() []Entry {
	out := make([]Entry, len(entries))
	for i, e := range entries {
		out[i] = clone(e)
	}
	return out
}

// Lookup returns the entry named name.
func Lookup(name string) (Entry, error) {
	for _, e := range entries {
		if e.Name == name {
			return clone(e), nil
		}
	}
	return Entry{}, errdefs.New(errdefs.ErrNotFound, "run `pyro env list` to see the catalog", "unknown environment %q", name)
}

func clone(e Entry) Entry {
	e.Packages = slices.Clone(e.Packages)
	if e.Packages == nil {
		e.Packages = []string{}
	}
	return e
}

// uniq drops repeated names, keeping the first occurrence's position.
func uniq(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
