package qemu

import "testing"

// A TCG guest's CPU has ARAT, so that its kernel stops the tick when idle
// (nohz): without it every idle guest ran 250 timer interrupts a second
// under TCG (~43 ms of a host core per second; ~3 ms with it), which the
// idle forks and their source took from the forks still restoring. The
// model is part of the snapshot identity: a snapshot saved by a QEMU with
// another CPU is not restored. KVM guests keep QEMU's default.
func TestTCGGuestsStopTheirTickWhenIdle(t *testing.T) {
	spec := testSpec(t)
	if got := argAfter(New("/usr/bin/qemu-system-x86_64", "tcg").Args(spec), "-cpu", ""); got != "qemu64,+arat" {
		t.Fatalf("tcg -cpu %q", got)
	}
	if got := argAfter(New("/usr/bin/qemu-system-x86_64", "kvm").Args(spec), "-cpu", ""); got != "" {
		t.Fatalf("kvm -cpu %q", got)
	}
	if id := New("/nonexistent/qemu", "tcg").SnapshotIdentity(); id != "/nonexistent/qemu tcg qemu64,+arat" {
		t.Fatalf("snapshot identity %q does not name the CPU", id)
	}
}
