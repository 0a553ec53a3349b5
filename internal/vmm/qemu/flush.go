package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// FlushLive has QEMU write the running guest's workspace disk through to
// its file: the qcow2 metadata it caches, then an fdatasync, as a flush
// from the guest would. The guest's sync after a command leaves writes
// behind that no flush follows (the home copies of metadata its journal
// committed), so the switch that freezes the layer at the next checkpoint
// (blockdev-snapshot flushes the old top first) would flush them on that
// command's path: flushed ahead, with the guest idle, the switch finds
// nothing to write. QMP has no command that flushes one drive; HMP's
// qemu-io does (the guest's own I/O goes on meanwhile, ordered by QEMU's
// block layer).
func FlushLive(ctx context.Context, dir vmdir.Dir) error {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	r, err := q.call(ctx, "human-monitor-command", map[string]any{"command-line": `qemu-io workspace "flush"`}, nil)
	if err != nil {
		return err
	}
	var out string
	if err := json.Unmarshal(r, &out); err != nil {
		return fmt.Errorf("qmp human-monitor-command: %w", err)
	}
	if out = strings.TrimSpace(out); out != "" {
		return fmt.Errorf("flush the workspace disk: %s", out[:min(len(out), 256)])
	}
	return nil
}
