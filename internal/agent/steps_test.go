package agent

import (
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// TestExecTimings: an exec that asks gets its phases on the guest's clock
// in the result; one that does not gets none (and runs no timing code).
func TestExecTimings(t *testing.T) {
	c := newTestClient(t, Options{})
	ctx := testCtx(t)
	res, err := c.Exec(ctx, agentapi.ExecRequest{Shell: "true", Timings: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, phase := range []string{"prepare=", "start=", "wait=", "drain=", "sync="} {
		if !strings.Contains(res.Timings, phase) {
			t.Errorf("timings %q lack %s", res.Timings, phase)
		}
	}
	res, err = c.Exec(ctx, agentapi.ExecRequest{Shell: "true"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Timings != "" {
		t.Errorf("timings %q not asked for", res.Timings)
	}
	var st *steps
	st.mark("nothing") // a nil steps does nothing
	if st.String() != "" {
		t.Error("nil steps")
	}
}
