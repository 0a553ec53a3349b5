package vm

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// DiedUnused is called when a guest was meant to wait unused (a pool's
// guest, before any claim: only pyro's own priming ran in it) and reports
// whether its VMM has exited, or does within grace, and how (with the
// console's last lines). If it has and the guest was restored from a
// golden snapshot, that is counted against the snapshot, which goes after
// golden.MaxBrokenRestores such deaths (golden.Store.RecordBroken): a
// snapshot whose every restore crashes soon after (a state saved while
// the guest ran, older QEMU) is not restored forever by a pool that
// refills. The reason, with the console's last lines, is logged.
func (v *VM) DiedUnused(log *slog.Logger, grace time.Duration) (note string, died bool) {
	if v == nil || v.Machine == nil {
		return "", false
	}
	if !exited(v.Machine.Done(), grace) {
		return "", false
	}
	note = fmt.Sprintf("%s; console: %s", qemuExit(v.Machine), consoleTail(v.Dir.Path(vmdir.ConsoleLog)))
	snap := v.warm.snapshot
	if snap == nil || v.Start != StartWarm {
		return note, true
	}
	why := fmt.Sprintf("restored guest %s exited unused (%s)", v.ID, note)
	discarded, err := SnapshotStore(v.Environment.Dir).RecordBroken(snap.Dir, why)
	switch {
	case err != nil:
		log.Warn("record a broken restore of a memory snapshot", "vm_id", v.ID, "dir", snap.Dir, "err", err)
	case discarded:
		log.Warn("discarded memory snapshot: its restored guests keep dying", "vm_id", v.ID, "dir", snap.Dir, "last", why)
	default:
		log.Warn("a guest restored from a memory snapshot died unused", "vm_id", v.ID, "dir", snap.Dir, "why", why)
	}
	return note, true
}

// exited says whether done is closed now or within grace.
func exited(done <-chan struct{}, grace time.Duration) bool {
	select {
	case <-done:
		return true
	default:
	}
	if grace <= 0 {
		return false
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
