package pyro

import (
	"context"
	"time"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// summaryMaxCommands and summaryMaxEvents keep a summary short: the most
// recent ones are kept, the counts say how many there were.
const (
	summaryMaxCommands = 50
	summaryMaxEvents   = 50
	summaryMaxChanges  = 200
)

// SummaryCommand is one command of a summary (output left out: see
// LogsWorkspace).
type SummaryCommand struct {
	Seq        int       `json:"seq"`
	Command    []string  `json:"command"`
	ExitCode   int       `json:"exit_code"`
	DurationMS int64     `json:"duration_ms"`
	StartedAt  time.Time `json:"started_at"`
	TimedOut   bool      `json:"timed_out,omitempty"`
}

// SummaryChange is one path changed since the baseline (or the last reset).
type SummaryChange struct {
	Path   string `json:"path"`
	Status string `json:"status"` // "added", "modified" or "deleted"
	Kind   string `json:"kind"`
}

// SummaryService is one service and its state.
type SummaryService struct {
	Name    string     `json:"name"`
	State   string     `json:"state"`
	ReadyAt *time.Time `json:"ready_at,omitempty"`
}

// SummaryEvent is one recorded change besides commands: a file write, a
// patch apply, a sync, an export, a snapshot, a reset.
type SummaryEvent struct {
	Kind string    `json:"kind"`
	At   time.Time `json:"at"`
	// Path is the guest path (or the snapshot name); Paths the files a
	// patch touched; Target the host side of a sync or an export.
	Path   string   `json:"path,omitempty"`
	Paths  []string `json:"paths,omitempty"`
	Target string   `json:"target,omitempty"`
	Count  int      `json:"count,omitempty"`
	Bytes  int64    `json:"bytes,omitempty"`
}

// WorkspaceSummary is a short review of a workspace's session: what ran,
// what changed, what runs.
type WorkspaceSummary struct {
	WorkspaceID string     `json:"workspace_id"`
	Name        string     `json:"name,omitempty"`
	State       string     `json:"state"`
	Environment string     `json:"environment"`
	CreatedAt   time.Time  `json:"created_at"`
	ResetCount  int        `json:"reset_count"`
	LastResetAt *time.Time `json:"last_reset_at"`
	// Commands are the last commands since the last reset, oldest first;
	// CommandCount and FailedCommandCount count them all.
	Commands           []SummaryCommand `json:"commands"`
	CommandCount       int              `json:"command_count"`
	FailedCommandCount int              `json:"failed_command_count"`
	// Changes are the paths that differ from the baseline (what a diff
	// shows); ChangesNote says why they are missing (a stopped workspace
	// is not booted for a summary).
	Changes     []SummaryChange  `json:"changes"`
	ChangeCount int              `json:"change_count"`
	ChangesNote string           `json:"changes_note,omitempty"`
	Services    []SummaryService `json:"services"`
	Snapshots   []string         `json:"snapshots"`
	// Events since the last reset (the reset itself included), oldest
	// first: file writes, patch applies, syncs, exports, snapshots.
	Events     []SummaryEvent `json:"events"`
	EventCount int            `json:"event_count"`
}

// SummarizeWorkspace reviews a workspace: the commands run (with exit
// codes) since the last reset, the paths changed since the baseline, the
// services and their states, the snapshots, and the file writes, patch
// applies, syncs and exports recorded. It never boots a stopped workspace:
// changes and services then stay empty, with a note.
func (c *Client) SummarizeWorkspace(ctx context.Context, id string) (WorkspaceSummary, error) {
	st, err := c.StatusWorkspace(ctx, id)
	if err != nil {
		return WorkspaceSummary{}, err
	}
	dir, _, err := c.wsDir(st.WorkspaceID)
	if err != nil {
		return WorkspaceSummary{}, err
	}
	s := WorkspaceSummary{WorkspaceID: st.WorkspaceID, Name: st.Name, State: st.State, Environment: st.Environment, CreatedAt: st.CreatedAt,
		ResetCount: st.ResetCount, LastResetAt: st.LastResetAt,
		Commands: []SummaryCommand{}, Changes: []SummaryChange{}, Services: []SummaryService{}, Snapshots: []string{}, Events: []SummaryEvent{}}

	hist, _ := workspace.ReadHistory(dir.Path(workspace.HistoryFile))
	s.CommandCount = len(hist)
	for i, h := range hist {
		if h.ExitCode != 0 || h.TimedOut {
			s.FailedCommandCount++
		}
		if i >= len(hist)-summaryMaxCommands {
			s.Commands = append(s.Commands, SummaryCommand{Seq: h.Seq, Command: h.Command, ExitCode: h.ExitCode, DurationMS: h.DurationMS, StartedAt: h.StartedAt, TimedOut: h.TimedOut})
		}
	}

	events, _ := workspace.ReadEvents(dir.Path(workspace.EventsFile))
	var since []workspace.Event
	for _, e := range events {
		// The reset's own event is written just after LastResetAt.
		if st.LastResetAt == nil || !e.At.Before(st.LastResetAt.Add(-time.Second)) {
			since = append(since, e)
		}
	}
	s.EventCount = len(since)
	if len(since) > summaryMaxEvents {
		since = since[len(since)-summaryMaxEvents:]
	}
	for _, e := range since {
		s.Events = append(s.Events, SummaryEvent(e))
	}

	if snaps, err := c.ListSnapshots(ctx, st.WorkspaceID); err == nil {
		for _, sn := range snaps {
			s.Snapshots = append(s.Snapshots, sn.Name)
		}
	}

	if st.State != instance.Running {
		s.ChangesNote = "the workspace is " + st.State + ": start it to see changed files and services"
		return s, nil
	}
	if d, err := c.DiffWorkspace(ctx, st.WorkspaceID); err == nil {
		s.ChangeCount = len(d.Changes)
		for i, ch := range d.Changes {
			if i == summaryMaxChanges {
				break
			}
			s.Changes = append(s.Changes, SummaryChange{Path: ch.Path, Status: ch.Status, Kind: ch.Kind})
		}
	} else {
		s.ChangesNote = "diff failed: " + err.Error()
	}
	if svcs, err := c.ListServices(ctx, st.WorkspaceID); err == nil {
		for _, sv := range svcs {
			s.Services = append(s.Services, SummaryService{Name: sv.Name, State: sv.State, ReadyAt: sv.ReadyAt})
		}
	}
	return s, nil
}
