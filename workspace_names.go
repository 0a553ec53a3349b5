package pyro

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gofrs/flock"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/names"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Names, labels and activity let a person or a model find a workspace
// again without keeping its id: a name is usable wherever a workspace id is
// (resolved once, in wsDir), unique among existing workspaces; labels are
// free key=value tags to filter lists by; last_activity_at orders lists.
//
// Uniqueness holds across processes: every change that gives a workspace
// a name checks and records it under one flock per state root
// (nameLockFile), so two creates racing for a name cannot both win.

// nameLockFile serialises name assignments; it lives in the workspaces
// directory and is hidden, so listings skip it.
const nameLockFile = ".names.lock"

// activityFile is touched by every command that reaches a workspace's
// guest; its mtime is last_activity_at. A file's mtime instead of a
// record field: commands need no lock to record it.
const activityFile = "activity"

// Label limits. Values are free text for people, bounded and printable.
const (
	maxLabels          = 32
	maxLabelValueBytes = 256
)

// ValidateWorkspaceName checks a workspace name: a letter or digit, then
// up to 63 letters, digits, '.', '_' or '-'. A name shaped like a
// workspace id (12 hex digits) is refused, so a name can never shadow or
// be shadowed by an id.
func ValidateWorkspaceName(name string) error {
	if !names.IsIdentifier(name) {
		return errdefs.New(errdefs.ErrInvalidArgument, "use a letter or digit, then up to 63 letters, digits, '.', '_' or '-'",
			"invalid workspace name %q", name)
	}
	if len(name) == 12 && strings.Trim(name, "0123456789abcdef") == "" {
		return errdefs.New(errdefs.ErrInvalidArgument, "pick a name that is not 12 hex digits, the shape of a workspace id",
			"workspace name %q looks like a workspace id", name)
	}
	return nil
}

// ValidateLabels checks label keys (identifiers, like names) and values
// (at most 256 bytes of printable UTF-8).
func ValidateLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return errdefs.New(errdefs.ErrInvalidArgument, "keep the labels that help find the workspace", "%d labels; at most %d", len(labels), maxLabels)
	}
	for k, v := range labels {
		if !names.IsIdentifier(k) {
			return errdefs.New(errdefs.ErrInvalidArgument, "label keys are a letter or digit, then letters, digits, '.', '_' or '-'", "invalid label key %q", k)
		}
		if len(v) > maxLabelValueBytes || !utf8.ValidString(v) || strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
			return errdefs.New(errdefs.ErrInvalidArgument, "label values are printable text of at most 256 bytes", "invalid value for label %q", k)
		}
	}
	return nil
}

// ParseLabels turns K=V strings (CLI flags, Python arguments) into labels;
// an entry without '=' is an error naming it.
func ParseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "write labels as KEY=VALUE, e.g. --label team=infra", "label %q has no '='", kv)
		}
		out[k] = v
	}
	return out, ValidateLabels(out)
}

// resolveWorkspace opens a workspace by id or, failing that, by name.
func (c *Client) resolveWorkspace(idOrName string) (vmdir.Dir, instance.Record, error) {
	dir, rec, err := c.lc.Open(instance.KindWorkspace, idOrName)
	if err == nil || !errors.Is(err, errdefs.ErrNotFound) || !names.IsIdentifier(idOrName) {
		return dir, rec, err
	}
	dirs, recs, lerr := c.lc.List(instance.KindWorkspace)
	if lerr != nil {
		return "", instance.Record{}, err
	}
	for i, r := range recs {
		if metaOf(r).Name == idOrName {
			return dirs[i], r, nil
		}
	}
	return "", instance.Record{}, errdefs.New(errdefs.ErrNotFound, "list them with `pyro workspace list`", "no workspace with id or name %q", idOrName)
}

// lockNames takes the state root's name lock.
func (c *Client) lockNames(ctx context.Context) (func(), error) {
	parent := c.lc.Parent(instance.KindWorkspace)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, err
	}
	l := flock.New(filepath.Join(parent, nameLockFile))
	ok, err := l.TryLockContext(ctx, 20*time.Millisecond)
	if err != nil || !ok {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "another pyro call is naming a workspace; retry", "cannot lock workspace names")
	}
	return func() { _ = l.Unlock() }, nil
}

// checkNameFree fails when another workspace than self has the name or
// that id. The caller holds the name lock.
func (c *Client) checkNameFree(name, self string) error {
	_, recs, err := c.lc.List(instance.KindWorkspace)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.ID != self && (metaOf(r).Name == name || r.ID == name) {
			return errdefs.New(errdefs.ErrAlreadyExists, "pick another name, or rename or delete workspace "+r.ID+" first",
				"workspace name %q is taken by workspace %s", name, r.ID)
		}
	}
	return nil
}

// touchActivity records that a command reached the workspace now.
func touchActivity(dir vmdir.Dir) {
	p := dir.Path(activityFile)
	now := time.Now()
	if err := os.Chtimes(p, now, now); errors.Is(err, os.ErrNotExist) {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			f.Close()
		}
	}
}

// lastActivity is when a command last reached the workspace, or when it
// was created.
func lastActivity(dir vmdir.Dir, rec instance.Record) time.Time {
	if fi, err := os.Stat(dir.Path(activityFile)); err == nil && fi.ModTime().After(rec.CreatedAt) {
		return fi.ModTime().UTC()
	}
	return rec.CreatedAt
}

// WorkspaceEntry is one compact row of a workspace list (`pyro workspace
// list --json`, the workspace_list tool): what picks a workspace, not its
// whole status.
type WorkspaceEntry struct {
	WorkspaceID    string            `json:"workspace_id"`
	Name           string            `json:"name"`
	Labels         map[string]string `json:"labels"`
	State          string            `json:"state"`
	Environment    string            `json:"environment"`
	CommandCount   int               `json:"command_count"`
	CreatedAt      time.Time         `json:"created_at"`
	LastActivityAt time.Time         `json:"last_activity_at"`
}

// Entry is ws's row of a workspace list.
func (ws Workspace) Entry() WorkspaceEntry {
	return WorkspaceEntry{WorkspaceID: ws.WorkspaceID, Name: ws.Name, Labels: ws.Labels, State: ws.State, Environment: ws.Environment,
		CommandCount: ws.CommandCount, CreatedAt: ws.CreatedAt, LastActivityAt: ws.LastActivityAt}
}

// ListWorkspacesOptions filter ListWorkspaces.
type ListWorkspacesOptions struct {
	// Labels keeps the workspaces that carry every one of these labels.
	Labels map[string]string
}

// ListWorkspaces returns the workspaces, most recently active first (by
// last_activity_at), optionally only those with all of opts.Labels. A nil
// opts lists every workspace.
func (c *Client) ListWorkspaces(ctx context.Context, opts *ListWorkspacesOptions) ([]Workspace, error) {
	var o ListWorkspacesOptions
	if opts != nil {
		o = *opts
	}
	c.lc.Reconcile(ctx)
	_, recs, err := c.lc.List(instance.KindWorkspace)
	if err != nil {
		return nil, err
	}
	out := []Workspace{}
	for _, rec := range recs {
		m := metaOf(rec)
		match := true
		for k, v := range o.Labels {
			if got, ok := m.Labels[k]; !ok || got != v {
				match = false
			}
		}
		if !match {
			continue
		}
		if ws, err := c.StatusWorkspace(ctx, rec.ID); err == nil {
			out = append(out, ws)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].LastActivityAt.After(out[j].LastActivityAt) })
	return out, nil
}

// UpdateWorkspaceOptions change a workspace's name and labels. Nil and
// empty fields change nothing.
type UpdateWorkspaceOptions struct {
	// Name renames the workspace (unique among existing workspaces).
	Name string
	// Labels are set (added or replaced).
	Labels map[string]string
	// ClearLabels are removed (after Labels are set; naming a label in
	// both is an error).
	ClearLabels []string
}

// UpdateWorkspace renames a workspace or changes its labels. Bad input
// (a taken or invalid name, a bad label) changes nothing.
func (c *Client) UpdateWorkspace(ctx context.Context, id string, opts UpdateWorkspaceOptions) (Workspace, error) {
	if opts.Name != "" {
		if err := ValidateWorkspaceName(opts.Name); err != nil {
			return Workspace{}, err
		}
	}
	if err := ValidateLabels(opts.Labels); err != nil {
		return Workspace{}, err
	}
	for _, k := range opts.ClearLabels {
		if _, both := opts.Labels[k]; both {
			return Workspace{}, errdefs.New(errdefs.ErrInvalidArgument, "set it or clear it, not both", "label %q is both set and cleared", k)
		}
	}
	if opts.Name == "" && len(opts.Labels) == 0 && len(opts.ClearLabels) == 0 {
		return Workspace{}, errdefs.New(errdefs.ErrInvalidArgument, "pass --name NAME, --label KEY=VALUE or --clear-label KEY", "nothing to update")
	}
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return Workspace{}, err
	}
	if opts.Name != "" {
		unlock, err := c.lockNames(ctx)
		if err != nil {
			return Workspace{}, err
		}
		defer unlock()
		if err := c.checkNameFree(opts.Name, rec.ID); err != nil {
			return Workspace{}, err
		}
	}
	err = c.lc.Update(ctx, dir, instance.KindWorkspace, func(r *instance.Record) error {
		m := metaOf(*r)
		if opts.Name != "" {
			m.Name = opts.Name
		}
		labels := map[string]string{}
		for k, v := range m.Labels {
			labels[k] = v
		}
		for k, v := range opts.Labels {
			labels[k] = v
		}
		for _, k := range opts.ClearLabels {
			delete(labels, k)
		}
		if err := ValidateLabels(labels); err != nil {
			return err
		}
		m.Labels = labels
		setMeta(r, m)
		return nil
	})
	if err != nil {
		return Workspace{}, err
	}
	touchActivity(dir)
	return c.StatusWorkspace(ctx, rec.ID)
}

// StopWorkspace flushes and powers off a workspace's guest and keeps its
// disk, snapshots and history; a stopped workspace runs no supervisor and
// no VMM. Commands on it fail (failed_precondition) until StartWorkspace;
// stopping a stopped workspace fails the same way and changes nothing.
func (c *Client) StopWorkspace(ctx context.Context, id string) (Workspace, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return Workspace{}, err
	}
	if err := c.lc.StopKeep(ctx, dir, instance.KindWorkspace); err != nil {
		return Workspace{}, err
	}
	touchActivity(dir)
	return c.StatusWorkspace(ctx, rec.ID)
}

// StartWorkspace boots a stopped workspace on its disk (secrets are sent
// again). Starting a running workspace returns its status.
func (c *Client) StartWorkspace(ctx context.Context, id string) (Workspace, error) {
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return Workspace{}, err
	}
	if _, err := c.lc.StartStopped(ctx, dir, instance.KindWorkspace); err != nil {
		return Workspace{}, err
	}
	touchActivity(dir)
	return c.StatusWorkspace(ctx, rec.ID)
}

// claimName is CreateWorkspace's naming step: it validates name and
// labels and, for a name, takes the name lock and checks the name is free.
// The caller saves the record holding the name, then calls release, so
// the name is recorded before another create can check it.
func (c *Client) claimName(ctx context.Context, name string, labels map[string]string) (release func(), err error) {
	if name != "" {
		if err := ValidateWorkspaceName(name); err != nil {
			return nil, err
		}
	}
	if err := ValidateLabels(labels); err != nil {
		return nil, err
	}
	if name == "" {
		return func() {}, nil
	}
	unlock, err := c.lockNames(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.checkNameFree(name, ""); err != nil {
		unlock()
		return nil, err
	}
	return unlock, nil
}

// canonicalID returns the id of the workspace idOrName names, or idOrName
// itself when there is none (the call then fails with not found where it
// opens the workspace). Methods whose results echo the id call it first,
// so a result always carries the id, never the name.
func (c *Client) canonicalID(idOrName string) string {
	if _, rec, err := c.resolveWorkspace(idOrName); err == nil {
		return rec.ID
	}
	return idOrName
}

// statusNames fills a status's naming fields, and says "stopped" for a
// workspace stopped on purpose however its supervisor ended.
func statusNames(ws *Workspace, dir vmdir.Dir, rec instance.Record, m workspaceMeta) {
	ws.Name, ws.Labels, ws.LastActivityAt = m.Name, m.Labels, lastActivity(dir, rec)
	if ws.Labels == nil {
		ws.Labels = map[string]string{}
	}
	if rec.Stopped && ws.State != instance.Running {
		ws.State, ws.ReasonKind, ws.Reason = instance.Stopped, string(instance.CauseRequested), ""
	}
}
