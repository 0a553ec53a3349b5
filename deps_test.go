package pyro

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSDKDoesNotImportMCP: a Go program that uses only the SDK must not
// pull in the MCP go-sdk or a JSON-schema library; those belong to
// package mcpserver.
func TestSDKDoesNotImportMCP(t *testing.T) {
	goTool := "go"
	if root := os.Getenv("GOROOT"); root != "" {
		goTool = filepath.Join(root, "bin", "go")
	}
	if _, err := exec.LookPath(goTool); err != nil {
		t.Skipf("no go tool to list dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed too little to be believed: %q", deps)
	}
	for _, p := range deps {
		if strings.Contains(p, "modelcontextprotocol") || strings.Contains(p, "jsonschema") {
			t.Errorf("package pyro depends on %s", p)
		}
	}
}
