package supervisor

// Live fork's part of the supervisor API (issue #14):
//
//	POST /v1/fork/save <- ForkSaveRequest -> ForkSaveResult
//
// The supervisor of a running workspace saves its guest whole (vm.SaveLive)
// to State and, at the instant the guest is paused, copies the workspace's
// upper layer to Disk; the guest then resumes. Both paths must lie in a
// private directory inside the instance's own directory; State must not
// exist. On failure both are removed.
//
// A workspace directory holding ForkFile boots its first time as a fork
// of the state it names (vm.ForkBoot) instead of from its kernel or a
// golden snapshot; the file is removed once the fork runs, so later boots
// are ordinary ones.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vm"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// ForkFile names the state a new workspace's first boot restores.
const ForkFile = "fork.json"

// ForkSaveRequest is the body of POST /v1/fork/save.
type ForkSaveRequest struct {
	State string `json:"state"`
	Disk  string `json:"disk"`
}

// ForkSaveResult is its answer.
type ForkSaveResult struct {
	vm.ForkSource
	PausedMS   int64 `json:"paused_ms"`
	SaveMS     int64 `json:"save_ms"`
	StateBytes int64 `json:"state_bytes"`
	DiskBytes  int64 `json:"disk_bytes"`
}

// inside reports whether p is a path below dir's own subdirectories.
func inside(dir vmdir.Dir, p string) bool {
	rel, err := filepath.Rel(string(dir), filepath.Clean(p))
	return err == nil && filepath.IsAbs(p) && !strings.HasPrefix(rel, "..") && strings.Contains(rel, string(filepath.Separator))
}

func (s *server) forkRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/fork/save", func(w http.ResponseWriter, r *http.Request) {
		var req ForkSaveRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<10)).Decode(&req); err != nil {
			writeError(w, errdefs.New(errdefs.ErrInvalidArgument, "", "decode fork request: %v", err))
			return
		}
		res, err := s.forkSave(r.Context(), req)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
}

func (s *server) forkSave(ctx context.Context, req ForkSaveRequest) (res ForkSaveResult, err error) {
	if !inside(s.dir, req.State) || !inside(s.dir, req.Disk) {
		return res, errdefs.New(errdefs.ErrInvalidArgument, "", "fork files must be inside the workspace's directory")
	}
	s.mu.Lock()
	v, state := s.vm, s.status.State
	s.mu.Unlock()
	if v == nil || state != instance.Running {
		return res, errdefs.New(errdefs.ErrFailedPrecondition, "start it first", "guest is %s", state)
	}
	if s.rec.WorkspaceDisk == "" {
		return res, errdefs.New(errdefs.ErrFailedPrecondition, "", "only workspaces can be forked")
	}
	// The upper layer the save copies is the top the guest writes: no
	// checkpoint, housekeeping or push moves it meanwhile (their switch
	// would leave the copy an older layer than the saved page cache).
	unlock, err := workspace.LockLayers(ctx, string(s.dir))
	if err != nil {
		return res, err
	}
	defer unlock()
	f, err := os.OpenFile(req.State, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return res, err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(req.State)
			_ = os.Remove(req.Disk)
			err = diskFull(err)
		}
	}()
	var diskBytes, copyMS int64
	saved, err := v.SaveLive(ctx, f, func(ctx context.Context) error {
		t := time.Now()
		defer func() { copyMS = time.Since(t).Milliseconds() }()
		// The copy the forks get: the upper layer as the paused guest
		// left it (its page cache is in the saved RAM, so the pair is
		// consistent without a freeze), one raw image even when the
		// source keeps it as a chain of layers. Copied in the kernel,
		// neither hashed nor synced while the source is paused: each
		// fork's own copy of it is synced (nothing reads this one after
		// a crash: the staging directory is swept).
		src, done, err := workspace.Layers{Dir: string(s.dir), Disk: s.rec.WorkspaceDisk}.RawUpper(ctx)
		if err != nil {
			return err
		}
		defer done()
		if err := workspace.CopyFreshDisk(src, req.Disk); err != nil {
			return fmt.Errorf("copy the workspace disk: %w", err)
		}
		diskBytes = allocated(req.Disk)
		return nil
	})
	s.log.Info("fork save", "paused_ms", saved.PausedMS, "save_ms", saved.TotalMS, "state_bytes", saved.StateBytes,
		"released", saved.Released, "release_ms", saved.ReleaseMS, "copy_ms", copyMS, "disk_bytes", diskBytes, "err", err)
	if err != nil {
		return res, err
	}
	// No fsync of the state (~130 MB): the forks read it through the page
	// cache while the fork call runs, and nothing reads it after a crash
	// (the staging directory is swept, forks not yet running are
	// reconciled away), so durability would only delay every fork.
	res = ForkSaveResult{ForkSource: vm.ForkSource{State: req.State, Released: saved.Released, First: v.Health.FirstInherited},
		PausedMS: saved.PausedMS, SaveMS: saved.TotalMS, StateBytes: saved.StateBytes, DiskBytes: diskBytes}
	return res, nil
}

// allocated is the bytes of data the file at p holds (0 when unknown).
func allocated(p string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(p, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// diskFull gives a save that ran out of space its category and hint.
func diskFull(err error) error {
	if errdefs.Category(err) != nil {
		return err
	}
	// QEMU reports its own write error as text over QMP.
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || strings.Contains(err.Error(), "No space left on device") {
		return errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "free space on the host; the workspace is unchanged", "save the workspace for a fork")
	}
	return err
}

// ForkSave asks the supervisor to save its running guest for a fork.
func (c *Client) ForkSave(ctx context.Context, req ForkSaveRequest) (ForkSaveResult, error) {
	var out ForkSaveResult
	err := c.call(ctx, http.MethodPost, "/v1/fork/save", req, &out)
	return out, err
}

// forkSteps returns the boot steps of a directory that holds ForkFile.
func forkSteps(d vmdir.Dir) (vm.Steps, bool, error) {
	b, err := os.ReadFile(d.Path(ForkFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	var src vm.ForkSource
	if err := json.Unmarshal(b, &src); err != nil || src.State == "" {
		return nil, false, fmt.Errorf("damaged %s: %v", ForkFile, err)
	}
	return vm.ForkBoot(src), true, nil
}
