package qemu

import (
	"context"
	"slices"
	"testing"
)

// A golden snapshot's save pauses the guest before it migrates (a
// migration of a running TCG guest could save RAM older than the vCPU:
// every restore of such a state crashed), and leaves it paused.
func TestSaveStopsBeforeMigrate(t *testing.T) {
	f, dir, state := liveSaveFixture(t, "completed")
	err := (&Backend{}).Save(context.Background(), dir, state, func() {
		// The guest agent closes its port once its host let go.
		f.emit("VSERPORT_CHANGE", map[string]any{"id": agentPortID, "open": false})
	})
	if err != nil {
		t.Fatal(err)
	}
	all := f.commands()
	s, m := slices.Index(all, "stop"), slices.Index(all, "migrate")
	if s < 0 || m < 0 || s > m {
		t.Fatalf("commands %v: want stop before migrate", all)
	}
	if slices.Contains(all, "cont") {
		t.Fatalf("commands %v: the snapshot's guest was resumed after its save", all)
	}
}
