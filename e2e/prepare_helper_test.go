package e2e

import (
	"encoding/json"
	"testing"
)

// prepareSnapshot runs `pyro prepare --json args...` in env and returns the
// memory snapshot's path it reports.
func prepareSnapshot(t *testing.T, env []string, args ...string) string {
	t.Helper()
	r := pyro(t, env, append([]string{"prepare", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("prepare: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
	var prep struct {
		Snapshot struct {
			Path string `json:"path"`
		} `json:"snapshot"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &prep); err != nil || prep.Snapshot.Path == "" {
		t.Fatalf("prepare output: %v %s", err, r.stdout)
	}
	return prep.Snapshot.Path
}
