package pyro

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/lifecycle"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Checkpoints (CreateWorkspaceOptions.Checkpoints, layered workspaces
// only): before every exec, sync push, file write, patch apply and
// service start, the upper layer of /workspace is frozen and copied with
// its listing. UndoWorkspace returns /workspace to the state before a
// command; DiffWorkspaceSince names what the commands since a checkpoint
// touched. See internal/workspace/checkpoints.go for the costs and caps.

// Checkpoint is the state of /workspace before one command.
type Checkpoint struct {
	Number    int       `json:"number"`
	Command   string    `json:"command"`
	CreatedAt time.Time `json:"created_at"`
	// Bytes is the data the checkpoint's copy of the upper layer holds.
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	// BytesChanged is the size of the files the command after it
	// touched; -1 for the newest (its command's changes are still open).
	BytesChanged int64 `json:"bytes_changed"`
}

// UndoResult says where an undo took /workspace.
type UndoResult struct {
	WorkspaceID string `json:"workspace_id"`
	// Checkpoint is the checkpoint restored: /workspace is as it was
	// before that command. It and later checkpoints are gone.
	Checkpoint int       `json:"checkpoint"`
	Command    string    `json:"command"`
	Workspace  Workspace `json:"workspace"`
}

func checkpointsOf(dir vmdir.Dir) workspace.Checkpoints {
	return workspace.Checkpoints{Dir: dir.Path(workspace.CheckpointsDir)}
}

// checkpointsOn reports whether a workspace takes checkpoints.
func checkpointsOn(rec instance.Record) bool { return layered(rec) && metaOf(rec).Checkpoints }

// checkpoint takes a checkpoint before the step named by what, when the
// workspace takes them, and has the layers tidied after it
// (workspace_checkpoints_tidy.go). A checkpoint that cannot be taken (the
// host's disk is full) refuses the step: it must stay undoable.
func (c *Client) checkpoint(ctx context.Context, dir vmdir.Dir, rec instance.Record, agent *agentapi.Client, what string) error {
	if err := c.takeCheckpoint(ctx, dir, rec, agent, what); err != nil {
		return err
	}
	c.tidyAfter(ctx, dir, rec)
	return nil
}

// takeCheckpoint takes the checkpoint alone (the caller has the layers
// tidied after its step).
func (c *Client) takeCheckpoint(ctx context.Context, dir vmdir.Dir, rec instance.Record, agent *agentapi.Client, what string) error {
	if !checkpointsOn(rec) {
		return nil
	}
	if chainable(dir) {
		return c.checkpointLayer(ctx, dir, rec, agent, what)
	}
	if err := agent.FreezeLayer(ctx, freezeFor); err != nil {
		return fmt.Errorf("checkpoint: freeze /workspace: %w", err)
	}
	defer func() { _ = agent.ThawLayer(context.WithoutCancel(ctx)) }()
	m, err := agent.LayerManifest(ctx)
	if err != nil {
		return fmt.Errorf("checkpoint: list /workspace changes: %w", err)
	}
	if _, err := checkpointsOf(dir).Take(rec.WorkspaceDisk, m, instance.Redactor(dir).String(what)); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// checkpointLayer takes a checkpoint as a frozen layer (O(1), see
// workspace_chain.go); dropping and merging past the caps is left to the
// housekeeping after the step (tidyAfter).
func (c *Client) checkpointLayer(ctx context.Context, dir vmdir.Dir, rec instance.Record, agent *agentapi.Client, what string) error {
	unlock, err := lockLayers(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	// A quiet report kept from before describes a guest this call changes.
	_ = checkpointsOf(dir).ClearPending()
	ref, bytes, m, err := captureUpper(ctx, dir, rec, agent, true)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	if _, err := checkpointsOf(dir).TakeLayer(ref, bytes, m, instance.Redactor(dir).String(what)); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// checkpointFor opens an agent for a workspace and takes a checkpoint
// before the step what; the caller closes the agent.
func (c *Client) checkpointFor(ctx context.Context, dir vmdir.Dir, rec instance.Record, what string) error {
	if !checkpointsOn(rec) {
		return nil
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return err
	}
	defer agent.Close()
	return c.checkpoint(ctx, dir, rec, agent, what)
}

// ListCheckpoints lists a workspace's checkpoints, oldest first.
func (c *Client) ListCheckpoints(ctx context.Context, id string) ([]Checkpoint, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return nil, err
	}
	if err := needCheckpoints(rec); err != nil {
		return nil, err
	}
	list, err := checkpointsOf(dir).List()
	out := make([]Checkpoint, 0, len(list))
	for _, cp := range list {
		out = append(out, Checkpoint(cp))
	}
	return out, err
}

func needCheckpoints(rec instance.Record) error {
	if !checkpointsOn(rec) {
		return errdefs.New(errdefs.ErrFailedPrecondition, "create the workspace with --checkpoints", "workspace %q does not take checkpoints", rec.ID)
	}
	return nil
}

// UndoWorkspace returns /workspace to the state before the command of
// checkpoint to (0: the newest checkpoint, i.e. before the last command).
// Like a reset it recreates the sandbox: services and shells are gone, the
// root file system is fresh. The checkpoint is verified first; it and
// later ones are then dropped.
func (c *Client) UndoWorkspace(ctx context.Context, id string, to int) (UndoResult, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return UndoResult{}, err
	}
	if err := needCheckpoints(rec); err != nil {
		return UndoResult{}, err
	}
	cps := checkpointsOf(dir)
	if to == 0 {
		if to = cps.Last(); to == 0 {
			return UndoResult{}, errdefs.New(errdefs.ErrFailedPrecondition, "run a command first", "workspace %q has no checkpoint to undo to", rec.ID)
		}
	}
	cp, err := cps.Get(to)
	if err != nil {
		return UndoResult{}, err
	}
	ref, isLayer, err := cps.LayerOf(to, layersOf(dir, rec))
	if err != nil {
		return UndoResult{}, err
	}
	var image string
	if !isLayer {
		if image, err = cps.Verify(to); err != nil {
			return UndoResult{}, err
		}
	}
	err = c.lc.Reset(ctx, dir, rec, lifecycle.ResetSteps{
		Fresh: func(ctx context.Context) error {
			if isLayer {
				return restoreChain(ctx, dir, rec, &ref, "")
			}
			return c.freshLayer(ctx, dir, rec, image)
		},
	})
	if err != nil {
		return UndoResult{}, err
	}
	if err := cps.DropFrom(to); err != nil {
		return UndoResult{}, err
	}
	_ = dropUnreferenced(dir, rec)
	c.recordEvent(dir, workspace.Event{Kind: workspace.EventUndo, Path: fmt.Sprint(to), Target: cp.Command})
	ws, err := c.StatusWorkspace(ctx, rec.ID)
	return UndoResult{WorkspaceID: rec.ID, Checkpoint: to, Command: cp.Command, Workspace: ws}, err
}

// DiffWorkspaceSince names the paths the commands since checkpoint n
// touched (added, modified, deleted), from the guest's listings of the
// upper layer then and now: no file content is read.
func (c *Client) DiffWorkspaceSince(ctx context.Context, id string, n int) (WorkspaceDiff, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return WorkspaceDiff{}, err
	}
	if err := needCheckpoints(rec); err != nil {
		return WorkspaceDiff{}, err
	}
	cps := checkpointsOf(dir)
	then, err := cps.Manifest(n)
	if err != nil {
		return WorkspaceDiff{}, err
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return WorkspaceDiff{}, err
	}
	defer agent.Close()
	now, err := agent.LayerManifest(ctx)
	if err != nil {
		return WorkspaceDiff{}, fmt.Errorf("list /workspace changes: %w", err)
	}
	d := workspace.CompareManifests(then, now, cps.BaseIndex())
	d.Redact(instance.Redactor(dir))
	return diffFrom(rec.ID, d), nil
}

// commandLabel is a checkpoint's label for an exec.
func commandLabel(cmd []string) string { return "exec: " + strings.Join(cmd, " ") }
