package pyro

import (
	"context"
	"errors"
	"testing"

	"github.com/pyro-mcp/pyro/internal/instance"
)

func TestParsePublish(t *testing.T) {
	got, err := parsePublish([]string{"8000", "18001:8001", " 0:9000 ", "1024:80"})
	if err != nil || len(got) != 4 || got[0] != (portSpec{0, 8000}) || got[1] != (portSpec{18001, 8001}) || got[2] != (portSpec{0, 9000}) || got[3] != (portSpec{1024, 80}) {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range [][]string{{"0"}, {"65536"}, {"-1"}, {"80:"}, {":80"}, {"a:80"}, {"70000:80"}, {"1:2:3"}, {"8000", "18000:8000"}, {"1:80", "1:81"}, {""}, {"80:8000"}, {"1023:8000"},
		make([]string, maxPublish+1)} {
		if _, err := parsePublish(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("parsePublish(%q) = %v, want invalid_argument", bad, err)
		}
	}
}

// Publishing needs egress+published-ports: refused before anything starts.
func TestPublishNeedsPolicy(t *testing.T) {
	c, err := New(Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rec, err := newRecord(instance.KindWorkspace, CreateVMOptions{Environment: DefaultEnvironment, VCPUCount: 1, MemMiB: 256, Network: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.lc.Create(ctx, rec, nil); err != nil {
		t.Fatal(err)
	}
	_, err = c.StartService(ctx, rec.ID, "web", StartServiceOptions{Command: []string{"true"}, Publish: []string{"8000"}})
	if !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("publish under egress: %v", err)
	}
	_, err = c.StartService(ctx, rec.ID, "web", StartServiceOptions{Command: []string{"true"}, Publish: []string{"8000:0"}})
	if !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad publish: %v", err)
	}
	if st, _ := c.StatusWorkspace(ctx, rec.ID); st.State != instance.Created {
		t.Fatalf("a refused publish started the workspace: %s", st.State)
	}
}
