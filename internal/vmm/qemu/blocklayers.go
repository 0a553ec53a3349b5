package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// A workspace's upper layer as a chain of images (internal/workspace
// chain.go): a raw root under qcow2 overlays, the last one the guest's
// writable disk. QEMU opens none of them by path: each layer is a fd set
// holding a read-write and a read-only descriptor of its file (QEMU
// reopens a layer read-only when an overlay goes over it, and read-write
// when a commit merges into it). The top keeps the drive id "workspace";
// every layer's node name is derived from its file name (NodeName), so
// pyro can name them over QMP in a later call.

// fdsetChain is the first fd set of the chain's lower layers.
const fdsetChain = 10

// NodeName is QEMU's node name for a layer file: "ws" and its number
// (N.qcow2, N.raw), "ws0" for the workspace's original disk.
func NodeName(path string) string {
	base := filepath.Base(path)
	for _, ext := range []string{".qcow2", ".raw"} {
		if n, ok := strings.CutSuffix(base, ext); ok && n != "" && strings.Trim(n, "0123456789") == "" {
			return "ws" + n
		}
	}
	return "ws0"
}

func layerFormat(path string) string {
	if strings.HasSuffix(path, ".qcow2") {
		return "qcow2"
	}
	return "raw"
}

// workspaceTop is the file QEMU writes /workspace's upper layer to.
func workspaceTop(spec vmm.Spec) string {
	if n := len(spec.WorkspaceChain); n > 0 {
		return spec.WorkspaceChain[n-1]
	}
	return spec.WorkspaceDisk
}

// fdChain is the first descriptor of the lower layers: after every fixed
// one (disks, network socket).
func fdChain(spec vmm.Spec) int {
	if spec.Network && spec.NetworkFile != nil {
		return netFD(spec) + 1 // after the network stack's socket
	}
	return netFD(spec)
}

// workspaceDrive returns the arguments of /workspace's upper disk: one raw
// image, or the chain with its top as the drive.
func workspaceDrive(spec vmm.Spec) []string {
	chain := spec.WorkspaceChain
	top := workspaceTop(spec)
	var args []string
	// No image locking (file.locking=off, here and on every layer): a
	// read-only open leaves its OFD locks on its fd set descriptor, so
	// re-activating the disks after a live save (fork) would find them and
	// fail; one VMM per disk is pyro's own rule (a supervisor ends an old
	// VMM before it starts a new one).
	drive := fmt.Sprintf("id=workspace,file=/dev/fdset/%d,format=%s,if=none,cache=writeback,discard=unmap,node-name=%s,file.locking=off",
		fdsetWorkspace, layerFormat(top), NodeName(top))
	if len(chain) > 1 {
		lower := chain[:len(chain)-1]
		for i, p := range lower {
			set := fdsetChain + i
			fd := fdChain(spec) + 2*i
			bd := fmt.Sprintf("driver=%s,node-name=%s,read-only=on,file.driver=file,file.filename=/dev/fdset/%d,file.locking=off",
				layerFormat(p), NodeName(p), set)
			if i > 0 {
				bd += ",backing=" + NodeName(lower[i-1])
			}
			args = append(args,
				"-add-fd", fmt.Sprintf("fd=%d,set=%d", fd, set),
				"-add-fd", fmt.Sprintf("fd=%d,set=%d", fd+1, set),
				"-blockdev", bd)
		}
		drive += ",backing=" + NodeName(lower[len(lower)-1])
	}
	return append(args,
		// -drive opens the image read-only first and reopens it
		// read-write when the device attaches: the set holds both.
		"-add-fd", fmt.Sprintf("fd=%d,set=%d", fdWorkspace, fdsetWorkspace),
		"-add-fd", fmt.Sprintf("fd=%d,set=%d", fdWorkspaceRO, fdsetWorkspace),
		"-drive", drive,
		"-device", "virtio-blk-device,drive=workspace")
}

// openChain opens the lower layers read-write and read-only, in the order
// of workspaceDrive's descriptors.
func openChain(spec vmm.Spec, open func(string, int) error) error {
	if len(spec.WorkspaceChain) < 2 {
		return nil
	}
	for _, p := range spec.WorkspaceChain[:len(spec.WorkspaceChain)-1] {
		if err := open(p, os.O_RDWR); err != nil {
			return err
		}
		if err := open(p, os.O_RDONLY); err != nil {
			return err
		}
	}
	return nil
}

// addLayerFile hands file to QEMU as a new fd set (read-write and
// read-only descriptors) and returns the set's id.
func addLayerFile(ctx context.Context, q *qmp, path string) (int, error) {
	set := -1
	for _, flag := range []int{os.O_RDWR, os.O_RDONLY} {
		f, err := os.OpenFile(path, flag, 0)
		if err != nil {
			return 0, err
		}
		args := map[string]any{}
		if set >= 0 {
			args["fdset-id"] = set
		}
		r, err := q.call(ctx, "add-fd", args, f)
		f.Close()
		if err != nil {
			return 0, err
		}
		var info struct {
			Set int `json:"fdset-id"`
		}
		if err := json.Unmarshal(r, &info); err != nil {
			return 0, fmt.Errorf("qmp add-fd: %w", err)
		}
		set = info.Set
	}
	return set, nil
}

// PushOverlay puts the empty qcow2 overlay at path over the running
// guest's workspace disk (blockdev-snapshot: QEMU drains the disk, the old
// top becomes the overlay's read-only backing, the guest goes on writing
// into the overlay). The caller holds the guest's file system frozen.
func PushOverlay(ctx context.Context, dir vmdir.Dir, path string) error {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	set, err := addLayerFile(ctx, q, path)
	if err != nil {
		return err
	}
	node := NodeName(path)
	add := map[string]any{
		"driver": "qcow2", "node-name": node, "backing": nil,
		"file": map[string]any{"driver": "file", "filename": fmt.Sprintf("/dev/fdset/%d", set), "locking": "off"},
	}
	if _, err := q.call(ctx, "blockdev-add", add, nil); err != nil {
		_, _ = q.call(ctx, "remove-fd", map[string]any{"fdset-id": set}, nil)
		return err
	}
	if _, err := q.call(ctx, "blockdev-snapshot", map[string]any{"node": "workspace", "overlay": node}, nil); err != nil {
		_, _ = q.call(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		_, _ = q.call(ctx, "remove-fd", map[string]any{"fdset-id": set}, nil)
		return err
	}
	return nil
}

// CommitLayer merges the layer file top into its parent base inside the
// running guest's chain (block-commit of an intermediate layer: QEMU
// copies top's clusters into base, then points top's child at base,
// writing backingName into the child's header). Until it returns, the
// chain through top still reads the same data, so a crash at any point
// leaves every state above base intact.
func CommitLayer(ctx context.Context, dir vmdir.Dir, top, base, backingName string) error {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	job := "merge-" + NodeName(top)
	args := map[string]any{
		"job-id": job, "device": "workspace", "top-node": NodeName(top), "base-node": NodeName(base),
		"backing-file": backingName, "auto-dismiss": false,
	}
	if _, err := q.call(ctx, "block-commit", args, nil); err != nil {
		return err
	}
	for {
		r, err := q.call(ctx, "query-jobs", nil, nil)
		if err != nil {
			return err
		}
		var jobs []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(r, &jobs); err != nil {
			return fmt.Errorf("qmp query-jobs: %w", err)
		}
		done := true
		for _, j := range jobs {
			if j.ID != job {
				continue
			}
			if j.Status != "concluded" {
				done = false
				break
			}
			_, _ = q.call(ctx, "job-dismiss", map[string]any{"id": job}, nil)
			if j.Error != "" {
				return fmt.Errorf("merge %s into %s: %s", filepath.Base(top), filepath.Base(base), j.Error)
			}
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}
