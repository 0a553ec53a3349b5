package vmm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

func TestRegistry(t *testing.T) {
	probe := func(context.Context, ProbeInput) (Probed, error) { return Probed{}, nil }
	Register(Registration{Name: "b-test", Priority: 5, Probe: probe})
	Register(Registration{Name: "a-test", Priority: 5, Probe: probe})
	Register(Registration{Name: "c-test", Priority: 1, Probe: probe})
	var names []string
	for _, r := range Registered() {
		names = append(names, r.Name)
	}
	if got := strings.Join(names, ","); got != "c-test,a-test,b-test" {
		t.Fatalf("order: %s", got)
	}
	if _, ok := Lookup("a-test"); !ok {
		t.Fatal("lookup")
	}
	if _, ok := Lookup("nope"); ok {
		t.Fatal("lookup of nothing")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("double registration accepted")
		}
	}()
	Register(Registration{Name: "a-test", Probe: probe})
}

func TestUnusableAndFeatures(t *testing.T) {
	if e := (&Unusable{Reason: "r", Hint: "h"}).Error(); e != "r (hint: h)" {
		t.Fatal(e)
	}
	if e := (&Unusable{Reason: "r"}).Error(); e != "r" {
		t.Fatal(e)
	}
	all := Needs{NetworkPolicy: true, MemorySnapshot: true, DiskSnapshot: true}
	if m := (Features{}).Missing(all); len(m) != 3 {
		t.Fatalf("missing %v", m)
	}
	if m := (Features{NetworkPolicy: true, MemorySnapshot: true, DiskSnapshot: true}).Missing(all); len(m) != 0 {
		t.Fatalf("missing %v", m)
	}
}

// A process-backed machine: one waiter, the pid file, an agent socket
// dial that fails at once when the process exits first, graceful stop.
func TestProcessMachine(t *testing.T) {
	dir := vmdir.Dir(t.TempDir())
	os.WriteFile(dir.Path("log"), []byte("line one\nfatal: no kvm\n"), 0o600)
	m, err := StartMachine(exec.Command("sh", "-c", "exit 3"), dir, "log", "test vmm")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dir.Path(vmdir.VMMPid)); strings.TrimSpace(string(b)) == "" {
		t.Fatal("no pid file")
	}
	_, err = m.DialAgent(context.Background())
	if err == nil || !strings.Contains(err.Error(), "test vmm exited") || !strings.Contains(err.Error(), "no kvm") {
		t.Fatalf("dial of an exited process: %v", err)
	}
	<-m.Done()
	var ee *exec.ExitError
	if !errors.As(m.Err(), &ee) || ee.ExitCode() != 3 {
		t.Fatalf("exit: %v", m.Err())
	}

	// A process that ignores SIGTERM is killed when ctx ends.
	p, err := StartProcess(exec.Command("sh", "-c", "trap '' TERM; sleep 30"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Err() != nil {
		t.Fatal("error before exit")
	}
	time.Sleep(50 * time.Millisecond) // let the trap be set
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(context.Background()); err != nil { // idempotent
		t.Fatal(err)
	}
	q, _ := StartProcess(exec.Command("sleep", "30"))
	q.Kill()
	select {
	case <-q.Done():
	default:
		t.Fatal("killed process not done")
	}

	// The dial waits for the socket and gives up with ctx.
	r, _ := StartProcess(exec.Command("sleep", "30"))
	defer r.Kill()
	dctx, dcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer dcancel()
	if _, err := r.DialUnix(dctx, filepath.Join(string(dir), "none.sock"), func() error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial: %v", err)
	}
}
