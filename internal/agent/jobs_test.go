package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// A background job returns at once, its output is read by cursor while it
// runs and after, wait is bounded and reports the exit code, and the list
// shows it.
func TestJobStartReadWait(t *testing.T) {
	c := newTestClient(t, Options{})
	dir := t.TempDir()
	start := time.Now()
	info, err := c.StartJob(testCtx(t), agentapi.ExecRequest{Shell: "echo first; sleep 1; echo done >&2; exit 4", Cwd: dir})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 900*time.Millisecond || info.State != agentapi.JobRunning || info.JobID == "" {
		t.Fatalf("start took %v: %+v", time.Since(start), info)
	}
	// A short wait times out with the job still running.
	w, err := c.WaitJob(testCtx(t), info.JobID, 100*time.Millisecond)
	if err != nil || w.State != agentapi.JobRunning || w.ExitCode != nil {
		t.Fatalf("short wait: %+v %v", w, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var r agentapi.JobReadResponse
	for {
		r, err = c.ReadJob(testCtx(t), info.JobID, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(r.Output, "first") || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r.Output != "first\n" || r.State != agentapi.JobRunning || r.NextCursor != 6 {
		t.Fatalf("partial read: %+v", r)
	}
	w, err = c.WaitJob(testCtx(t), info.JobID, 10*time.Second)
	if err != nil || w.State != agentapi.JobExited || w.ExitCode == nil || *w.ExitCode != 4 {
		t.Fatalf("wait: %+v %v", w, err)
	}
	r, err = c.ReadJob(testCtx(t), info.JobID, r.NextCursor, 0)
	if err != nil || r.Output != "done\n" || r.State != agentapi.JobExited || *r.ExitCode != 4 || r.More {
		t.Fatalf("final read: %+v %v", r, err)
	}
	// max_chars pages through the output.
	r, err = c.ReadJob(testCtx(t), info.JobID, 0, 3)
	if err != nil || r.Output != "fir" || !r.More || r.NextCursor != 3 {
		t.Fatalf("paged read: %+v %v", r, err)
	}
	list, err := c.ListJobs(testCtx(t))
	if err != nil || len(list) != 1 || list[0].JobID != info.JobID || list[0].Command != "echo first; sleep 1; echo done >&2; exit 4" || *list[0].ExitCode != 4 {
		t.Fatalf("list: %+v %v", list, err)
	}
}

func TestJobBoundsAndUnknownID(t *testing.T) {
	c := newTestClient(t, Options{})
	ctx := testCtx(t)
	if _, err := c.ReadJob(ctx, "feedfacefeed", 0, 0); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown id read: %v", err)
	}
	if _, err := c.WaitJob(ctx, "feedfacefeed", time.Second); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown id wait: %v", err)
	}
	if _, err := c.ReadJob(ctx, "../x", 0, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad id: %v", err)
	}
	if _, err := c.StartJob(ctx, agentapi.ExecRequest{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("no command: %v", err)
	}
	// Output beyond the buffer: the oldest is dropped and a reader at 0 is
	// told the dropped range; the capture elides the middle with a marker.
	info, err := c.StartJob(ctx, agentapi.ExecRequest{Shell: "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo END", Cwd: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if w, err := c.WaitJob(ctx, info.JobID, 20*time.Second); err != nil || w.ExitCode == nil || *w.ExitCode != 0 {
		t.Fatalf("wait: %+v %v", w, err)
	}
	r, err := c.ReadJob(ctx, info.JobID, 0, agentapi.JobBufferBytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Output) > agentapi.JobBufferBytes+agentapi.JobBufferBytes/4 || !strings.HasSuffix(r.Output, "END\n") || !strings.Contains(r.Output, "bytes of stdout elided") {
		t.Fatalf("big read: %d chars, dropped %+v, tail %q", len(r.Output), r.Dropped, r.Output[max(0, len(r.Output)-80):])
	}
	// At most MaxJobs jobs.
	for i := 1; i < agentapi.MaxJobs; i++ {
		if _, err := c.StartJob(ctx, agentapi.ExecRequest{Argv: []string{"true"}, Cwd: t.TempDir()}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.StartJob(ctx, agentapi.ExecRequest{Argv: []string{"true"}}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("job %d: %v", agentapi.MaxJobs+1, err)
	}
}

// A job's output and its listed command are redacted like exec output.
func TestJobRedacted(t *testing.T) {
	c := newTestClient(t, Options{SecretsDir: t.TempDir()})
	setTestSecrets(t, c, map[string]string{"TOKEN": testSecret})
	ctx := testCtx(t)
	info, err := c.StartJob(ctx, agentapi.ExecRequest{Shell: "printenv X; echo '" + testSecret + "' >&2", SecretEnv: map[string]string{"TOKEN": "X"}, Cwd: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	noSecret(t, "job command", info.Command)
	if w, err := c.WaitJob(ctx, info.JobID, 10*time.Second); err != nil || w.ExitCode == nil || *w.ExitCode != 0 {
		t.Fatalf("wait: %+v %v", w, err)
	}
	r, err := c.ReadJob(ctx, info.JobID, 0, 0)
	if err != nil || r.Output != "[REDACTED]\n[REDACTED]\n" {
		t.Fatalf("read: %+v %v", r, err)
	}
}
