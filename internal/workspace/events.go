package workspace

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"time"

	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// EventsFile is the workspace's log of what changed it besides commands
// (which are in HistoryFile): file writes, patch applies, syncs, exports,
// snapshots, resets. The summary reads it. (Not vmdir.Events, the
// supervisor's own event log.)
const EventsFile = "activity.jsonl"

// Event kinds.
const (
	EventFileWrite      = "file_write"
	EventPatchApply     = "patch_apply"
	EventSync           = "sync"
	EventExport         = "export"
	EventDiskExport     = "disk_export"
	EventSnapshotCreate = "snapshot_create"
	EventSnapshotDelete = "snapshot_delete"
	EventReset          = "reset"
	EventUndo           = "undo"
)

// Bounds of the events log.
const (
	// maxEventsBytes: past it, an append keeps the newer half.
	maxEventsBytes = 1 << 20
	// MaxEventPaths caps the paths one event keeps.
	MaxEventPaths = 50
	// maxEventField caps each string field.
	maxEventField = 1024
)

// Event is one entry of the events log.
type Event struct {
	Kind string    `json:"kind"`
	At   time.Time `json:"at"`
	// Path is the guest path involved (file write, sync destination,
	// export source) or the snapshot name.
	Path string `json:"path,omitempty"`
	// Paths are the files a patch touched (at most MaxEventPaths).
	Paths []string `json:"paths,omitempty"`
	// Target is the host path of an export or the source of a sync.
	Target string `json:"target,omitempty"`
	Count  int    `json:"count,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
}

func capField(s string) string {
	if len(s) > maxEventField {
		return s[:maxEventField] + "..."
	}
	return s
}

// AppendEvent adds e to the events log at path (best effort for the
// caller: a lost event only thins the summary).
func AppendEvent(path string, e Event) error {
	if e.At.IsZero() {
		e.At = time.Now().UTC()
	}
	e.Path, e.Target = capField(e.Path), capField(e.Target)
	if len(e.Paths) > MaxEventPaths {
		e.Paths = e.Paths[:MaxEventPaths]
	}
	for i := range e.Paths {
		e.Paths[i] = capField(e.Paths[i])
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(path); err == nil && fi.Size()+int64(len(b)) > maxEventsBytes {
		if err := keepNewerHalf(path); err != nil {
			return err
		}
	}
	return fsutil.AppendLine(path, b)
}

// keepNewerHalf rewrites the log with its newer half (atomically).
func keepNewerHalf(path string) error {
	events, err := ReadEvents(path)
	if err != nil {
		return err
	}
	events = events[len(events)/2:]
	return replaceFileWith(path, false, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		for _, e := range events {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		return nil
	})
}

// ReadEvents returns the log, oldest first.
func ReadEvents(path string) ([]Event, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return []Event{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := []Event{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e Event
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}
