// Command pydefaults writes python/pyro_mcp/_defaults.py from the Go
// SDK's defaults (run by `go generate` in the module root).
package main

import (
	"fmt"
	"os"

	"github.com/pyro-mcp/pyro/internal/pydefaults"
)

func main() {
	if err := os.WriteFile(pydefaults.Path, pydefaults.Render(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "pydefaults:", err)
		os.Exit(1)
	}
}
