package instance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

func newDir(t *testing.T) vmdir.Dir {
	t.Helper()
	d := vmdir.Dir(filepath.Join(t.TempDir(), "abc"))
	if err := d.Create(); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestRecordRoundTrip(t *testing.T) {
	d := newDir(t)
	if _, err := Load(d, "vm"); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "pyro vm list") {
		t.Fatalf("missing record: %v", err)
	}
	exp := time.Now().UTC().Add(time.Minute).Truncate(time.Second)
	rec := Record{ID: "abc", Kind: KindWorkspace, Environment: "debian:12", VCPUCount: 2, MemMiB: 512,
		TTLSeconds: 60, CreatedAt: time.Now().UTC().Truncate(time.Second), ExpiresAt: &exp, Extra: json.RawMessage(`{"x":1}`)}
	if err := Save(d, rec); err != nil {
		t.Fatal(err)
	}
	got, err := Load(d, "workspace")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != rec.ID || got.Kind != rec.Kind || !got.ExpiresAt.Equal(exp) || !strings.Contains(string(got.Extra), `"x": 1`) {
		t.Fatalf("round trip: %+v", got)
	}
	if fi, _ := os.Stat(d.Path(vmdir.Record)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode %v", fi.Mode())
	}
	os.WriteFile(d.Path(vmdir.Record), []byte("{"), 0o600)
	if _, err := Load(d, "vm"); err == nil {
		t.Fatal("corrupt record loaded")
	}
}

func TestExitNote(t *testing.T) {
	d := newDir(t)
	if _, ok := ReadExit(d); ok {
		t.Fatal("note without a file")
	}
	if err := WriteExit(d, Broken, CauseVMMExited, "qemu died"); err != nil {
		t.Fatal(err)
	}
	n, ok := ReadExit(d)
	if !ok || n.State != Broken || n.Cause != CauseVMMExited || n.Reason != "qemu died" || n.At.IsZero() {
		t.Fatalf("note: %+v", n)
	}
	os.WriteFile(d.Path(vmdir.Exit), []byte("garbage"), 0o600)
	if _, ok := ReadExit(d); ok {
		t.Fatal("garbage note read")
	}
}

func TestPid(t *testing.T) {
	d := newDir(t)
	if pid, alive := SupervisorPid(d); pid != 0 || alive {
		t.Fatalf("no pid file: %d %v", pid, alive)
	}
	if err := WritePid(d); err != nil {
		t.Fatal(err)
	}
	if pid, alive := SupervisorPid(d); pid != os.Getpid() || !alive {
		t.Fatalf("own pid: %d %v", pid, alive)
	}
	// The same pid with another start time is a recycled pid.
	os.WriteFile(d.Path(vmdir.SupervisorPid), []byte(fmt.Sprintf("%d 1\n", os.Getpid())), 0o600)
	if _, alive := SupervisorPid(d); alive {
		t.Fatal("recycled pid alive")
	}
	RemovePid(d) // names this pid: removed
	if _, err := os.Stat(d.Path(vmdir.SupervisorPid)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("own pid file kept")
	}
	os.WriteFile(d.Path(vmdir.SupervisorPid), []byte("1 1\n"), 0o600)
	RemovePid(d) // another process's: kept
	if _, err := os.Stat(d.Path(vmdir.SupervisorPid)); err != nil {
		t.Fatal("foreign pid file removed")
	}
	for _, bad := range []string{"", "x", "1 2 3", "999999 5"} {
		os.WriteFile(d.Path(vmdir.SupervisorPid), []byte(bad), 0o600)
		if _, alive := SupervisorPid(d); alive {
			t.Errorf("%q alive", bad)
		}
	}
	if startTime(-1) != 0 || !isZombie(999999) {
		t.Error("gone process")
	}
}

func TestLock(t *testing.T) {
	d := newDir(t)
	unlock, err := Lock(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	// A second holder (another fd, as another process would be) waits.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Lock(ctx, d); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("second lock: %v", err)
	}
	unlock()
	unlock2, err := Lock(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
}

func TestEventsRedacted(t *testing.T) {
	d := newDir(t)
	AppendEvent(d, "plain", map[string]any{"k": "s3cr3t-value"})
	if Redactor(d) != nil {
		t.Fatal("redactor without secrets")
	}
	os.WriteFile(d.Path(vmdir.Secrets), []byte(`{"TOKEN":"s3cr3t-value"}`), 0o600)
	AppendEvent(d, "secret", map[string]any{"s": "has s3cr3t-value in it", "e": errors.New("err s3cr3t-value"), "n": 3})
	b, _ := os.ReadFile(d.Path(vmdir.Events))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 {
		t.Fatalf("events: %s", b)
	}
	if strings.Contains(lines[1], "s3cr3t-value") || !strings.Contains(lines[1], `"n":3`) {
		t.Fatalf("secret event not redacted: %s", lines[1])
	}
	var e Event
	if err := json.Unmarshal([]byte(lines[0]), &e); err != nil || e.Event != "plain" {
		t.Fatalf("event: %+v %v", e, err)
	}
	os.WriteFile(d.Path(vmdir.Secrets), []byte(`{}`), 0o600)
	if Redactor(d) != nil {
		t.Fatal("redactor for no values")
	}
	// An event log that cannot be written is skipped, not fatal.
	AppendEvent(vmdir.Dir(filepath.Join(t.TempDir(), "gone")), "x", nil)
}

func TestRecordPolicy(t *testing.T) {
	if p := (Record{Network: true}).Policy(); p.Mode != netpolicy.Egress {
		t.Fatalf("old networked record: %v", p)
	}
	if p := (Record{}).Policy(); p.Mode != netpolicy.Off {
		t.Fatalf("old record: %v", p)
	}
	var r Record
	r.SetPolicy(netpolicy.Policy{Mode: netpolicy.EgressPublished, AllowHosts: []string{"pypi.org"}})
	if !r.Network || r.Policy().String() != "egress+published-ports (pypi.org)" {
		t.Fatalf("got %+v", r)
	}
	r.SetPolicy(netpolicy.Policy{})
	if r.Network || r.NetworkPolicy != netpolicy.Off || r.AllowHosts != nil {
		t.Fatalf("got %+v", r)
	}
}
