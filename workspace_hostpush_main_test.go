package pyro

import (
	"os"
	"testing"

	"github.com/pyro-mcp/pyro/internal/hostwrite"
)

// TestMain lets this test binary be the confined debugfs of host pushes
// (hostwrite.Main), as pyro's own main is: the host push tests run the
// real confined write.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == hostwrite.HiddenArg {
		hostwrite.Main(os.Args[2:])
		return
	}
	if self, err := os.Executable(); err == nil {
		hostwrite.UseTool(self)
	}
	os.Exit(m.Run())
}
