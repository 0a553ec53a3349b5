package agentapi

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// TestHandedOutIDsChecked plays a guest that answers a shell open and a
// background exec with ids its agent never hands out: terminal escape
// sequences (the CLI prints the id as it came) and a path. The host
// refuses both answers instead of passing the id on.
func TestHandedOutIDsChecked(t *testing.T) {
	for _, id := range []string{"\x1b]0;owned\x07\x1b[2J", "../../v1/health", ""} {
		mux := http.NewServeMux()
		answer := func(field string) http.HandlerFunc {
			return func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, `{"`+field+`":`+quoteJSON(id)+`,"state":"running"}`)
			}
		}
		mux.HandleFunc("POST "+PathShells, answer("shell_id"))
		mux.HandleFunc("POST "+PathJobs, answer("job_id"))
		c, _ := fakeAgent(t, mux)
		if info, err := c.OpenShell(ctx(t), ShellOpenRequest{}); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("shell id %q: got %q, %v", id, info.ShellID, err)
		}
		if info, err := c.StartJob(ctx(t), ExecRequest{Shell: "true"}); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("job id %q: got %q, %v", id, info.JobID, err)
		}
	}
}

func quoteJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
