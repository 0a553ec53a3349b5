package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestWorkspaceJobs drives a background job through the CLI (#17 item 9):
// exec --background returns before the command ends, read shows partial
// then complete output, wait returns exit code 4, status lists the job and
// a reset clears it.
func TestWorkspaceJobs(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	id, env := newWorkspace(t)

	type job struct {
		JobID    string `json:"job_id"`
		Command  string `json:"command"`
		State    string `json:"state"`
		ExitCode *int   `json:"exit_code"`
	}
	var j job
	start := time.Now()
	mustWS(t, env, &j, "exec", "--background", id, "--", "echo started; sleep 3; echo done; exit 4")
	if took := time.Since(start); j.JobID == "" || j.State != "running" {
		t.Fatalf("exec --background (%v): %+v", took, j)
	}
	type read struct {
		Output     string `json:"output"`
		NextCursor int64  `json:"next_cursor"`
		More       bool   `json:"more"`
		State      string `json:"state"`
		ExitCode   *int   `json:"exit_code"`
	}
	// Partial output while it runs.
	var r read
	deadline := time.Now().Add(10 * time.Second)
	for r.Output == "" && time.Now().Before(deadline) {
		mustWS(t, env, &r, "job", "read", id, j.JobID)
	}
	if r.Output != "started\n" || r.State != "running" || r.ExitCode != nil {
		t.Fatalf("partial read: %+v", r)
	}
	var w job
	mustWS(t, env, &w, "job", "wait", id, j.JobID, "--timeout-seconds", "30")
	if w.State != "exited" || w.ExitCode == nil || *w.ExitCode != 4 {
		t.Fatalf("wait: %+v", w)
	}
	mustWS(t, env, &r, "job", "read", id, j.JobID, "--cursor", "8")
	if r.Output != "done\n" || r.State != "exited" || r.ExitCode == nil || *r.ExitCode != 4 || r.More {
		t.Fatalf("read from cursor 8: %+v", r)
	}
	if out := pyro(t, env, "workspace", "job", "read", id, j.JobID); out.code != 0 || !strings.Contains(out.stdout, "started\ndone\n") {
		t.Fatalf("text read: %d %q %s", out.code, out.stdout, out.stderr)
	}
	var st struct {
		Jobs []job `json:"jobs"`
	}
	mustWS(t, env, &st, "status", id)
	if len(st.Jobs) != 1 || st.Jobs[0].JobID != j.JobID || st.Jobs[0].ExitCode == nil || *st.Jobs[0].ExitCode != 4 || !strings.Contains(st.Jobs[0].Command, "exit 4") {
		t.Fatalf("status jobs: %+v", st.Jobs)
	}
	// Bad and unknown ids.
	if out := ws(t, env, nil, "job", "read", id, "../x"); out.code == 0 || !strings.Contains(out.stderr, "invalid") {
		t.Fatalf("bad job id: %d %s", out.code, out.stderr)
	}
	// A reset (a new guest) ends and clears every job.
	mustWS(t, env, nil, "exec", "--background", id, "--", "sleep 300")
	mustWS(t, env, nil, "reset", id)
	st.Jobs = nil
	mustWS(t, env, &st, "status", id)
	if len(st.Jobs) != 0 {
		t.Fatalf("jobs after reset: %+v", st.Jobs)
	}
	if out := ws(t, env, nil, "job", "wait", id, j.JobID, "--timeout-seconds", "1"); out.code == 0 || !strings.Contains(out.stderr, "not_found") && !strings.Contains(out.stderr, "no job") {
		t.Fatalf("job after reset: %d %s", out.code, out.stderr)
	}
}
