package workspace

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

func TestEventsBounded(t *testing.T) {
	p := filepath.Join(t.TempDir(), EventsFile)
	many := make([]string, MaxEventPaths+10)
	for i := range many {
		many[i] = strings.Repeat("p", maxEventField+10)
	}
	if err := AppendEvent(p, Event{Kind: EventPatchApply, Paths: many, Target: strings.Repeat("t", 5000)}); err != nil {
		t.Fatal(err)
	}
	ev, err := ReadEvents(p)
	if err != nil || len(ev) != 1 || len(ev[0].Paths) != MaxEventPaths || len(ev[0].Paths[0]) > maxEventField+3 || len(ev[0].Target) > maxEventField+3 || ev[0].At.IsZero() {
		t.Fatalf("%d %v", len(ev), err)
	}
	// The log never grows past its bound: the newer half is kept.
	for i := 0; i < 3000; i++ {
		if err := AppendEvent(p, Event{Kind: EventFileWrite, Path: strings.Repeat("x", 900), Count: i}); err != nil {
			t.Fatal(err)
		}
	}
	fi, _ := os.Stat(p)
	ev, _ = ReadEvents(p)
	if fi.Size() > maxEventsBytes || ev[len(ev)-1].Count != 2999 || len(ev) < 100 {
		t.Fatalf("size %d, %d events, last %+v", fi.Size(), len(ev), ev[len(ev)-1].Count)
	}
}

// The activity log lives in the workspace directory beside the VM's files:
// it must not share a name with the supervisor's event log.
func TestEventsFileOwnName(t *testing.T) {
	for _, n := range []string{vmdir.Events, HistoryFile, DiskFile, BaseFile, SecretsFile} {
		if n == EventsFile {
			t.Fatalf("EventsFile %q collides", n)
		}
	}
}
