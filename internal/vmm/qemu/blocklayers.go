package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

// A workspace's upper layer as a chain of images (internal/workspace
// chain.go): a raw root under qcow2 overlays, the last one the guest's
// writable disk. QEMU opens none of them by path: each layer is a fd set
// of descriptors of its file. The top keeps the drive id "workspace";
// every layer's node name is derived from its file name (NodeName), so
// pyro can name them over QMP in a later call.
//
// Only the top's set holds a writable descriptor. A frozen layer is a
// saved state (snapshot, checkpoint): QEMU reopens it read-only when an
// overlay goes over it, and its set's writable descriptor is then removed
// (dropWritable), so a QEMU the guest took over cannot open it for writing
// again and rewrite what a later undo or reset restores. A merge, which
// must write its base and the header of the layer above, gets writable
// descriptors of those two for its run (CommitLayer). Every descriptor
// carries a tag (fdTag) that names its layer and access, so that later
// calls find them (query-fdsets).

// fdsetChain is the first fd set of the chain's lower layers.
const fdsetChain = 10

// layerOpts are the block options of every node of /workspace's upper
// disk, whichever way QEMU got it (-drive, -blockdev, a blockdev-add of a
// checkpoint's overlay or a pushed root), so that space the guest frees
// (fstrim, zeroes written) goes back to the host whichever layer is the
// top, and stays free when layers merge. Measured on QEMU 7.2 (a chain
// like pyro's in qemu-storage-daemon, 32 MiB of a 64 MiB raw root
// written, then discarded through an overlay):
//   - discard=unmap: a guest's discard reaches the top layer (without it,
//     a node ignores it: an overlay added after the first checkpoint kept
//     every byte of a 100 MiB file removed and trimmed). In a qcow2
//     overlay (version 3, as CreateOverlay writes) a discarded cluster
//     becomes a zero cluster, which reads as zeros: the lower layers' data
//     does not show through, and the overlay's own data cluster is freed.
//     In the raw root it punches a hole. A discard never reaches a lower
//     layer: those are read-only, and a qcow2 does not pass discards to its
//     backing, so a checkpoint or snapshot keeps every byte.
//   - detect-zeroes=unmap: a merge (block-commit) in 7.2 copies a zero
//     cluster into its base as written zeroes: merged into a frozen
//     overlay, 32 MiB of discarded clusters became 32 MiB of data (the
//     first fstrim after a mount trims all free space, ~7.8 GiB of an
//     8 GiB disk). With it they become zero clusters or holes in the base
//     (none allocated). It needs discard=unmap. The guest's own writes pay
//     a scan for zeroes that stops at the first non-zero byte.
var layerOpts = [][2]string{{"discard", "unmap"}, {"detect-zeroes", "unmap"}}

// layerOptsArg is layerOpts as a command line's ",key=value" list.
func layerOptsArg() string {
	var b strings.Builder
	for _, o := range layerOpts {
		b.WriteString("," + o[0] + "=" + o[1])
	}
	return b.String()
}

// withLayerOpts adds layerOpts to a blockdev-add's arguments.
func withLayerOpts(args map[string]any) map[string]any {
	for _, o := range layerOpts {
		args[o[0]] = o[1]
	}
	return args
}

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
	drive := fmt.Sprintf("id=workspace,file=/dev/fdset/%d,format=%s,if=none,cache=writeback%s,node-name=%s,file.locking=off",
		fdsetWorkspace, layerFormat(top), layerOptsArg(), NodeName(top))
	if len(chain) > 1 {
		lower := chain[:len(chain)-1]
		for i, p := range lower {
			set := fdsetChain + i
			// A frozen layer's options matter when a merge
			// reopens it for writing as its base.
			bd := fmt.Sprintf("driver=%s,node-name=%s,read-only=on%s,file.driver=file,file.filename=/dev/fdset/%d,file.locking=off",
				layerFormat(p), NodeName(p), layerOptsArg(), set)
			if i > 0 {
				bd += ",backing=" + NodeName(lower[i-1])
			}
			args = append(args,
				"-add-fd", fmt.Sprintf("fd=%d,set=%d,opaque=%s", fdChain(spec)+i, set, fdTag(p, false)),
				"-blockdev", bd)
		}
		drive += ",backing=" + NodeName(lower[len(lower)-1])
	}
	return append(args,
		// -drive opens the image read-only first and reopens it
		// read-write when the device attaches: the set holds both.
		"-add-fd", fmt.Sprintf("fd=%d,set=%d,opaque=%s", fdWorkspace, fdsetWorkspace, fdTag(top, true)),
		"-add-fd", fmt.Sprintf("fd=%d,set=%d,opaque=%s", fdWorkspaceRO, fdsetWorkspace, fdTag(top, false)),
		"-drive", drive,
		"-device", "virtio-blk-device,drive=workspace")
}

// openChain opens the lower layers read-only, in the order of
// workspaceDrive's descriptors.
func openChain(spec vmm.Spec, open func(string, int) error) error {
	if len(spec.WorkspaceChain) < 2 {
		return nil
	}
	for _, p := range spec.WorkspaceChain[:len(spec.WorkspaceChain)-1] {
		if err := open(p, os.O_RDONLY); err != nil {
			return err
		}
	}
	return nil
}

// fdTag is the opaque tag of a descriptor of layer path: its node name and
// its access ("ws3:rw", "ws3:ro").
func fdTag(path string, writable bool) string {
	if writable {
		return NodeName(path) + ":rw"
	}
	return NodeName(path) + ":ro"
}

// addFD hands QEMU a descriptor of path opened with flag, tagged with
// fdTag, into fd set set (a new set when set < 0); it returns the set and
// QEMU's number of the descriptor.
func addFD(ctx context.Context, q *qmp, path string, flag, set int) (int, int, error) {
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	args := map[string]any{"opaque": fdTag(path, flag == os.O_RDWR)}
	if set >= 0 {
		args["fdset-id"] = set
	}
	r, err := q.call(ctx, "add-fd", args, f)
	if err != nil {
		return 0, 0, err
	}
	var info struct {
		Set int `json:"fdset-id"`
		FD  int `json:"fd"`
	}
	if err := json.Unmarshal(r, &info); err != nil {
		return 0, 0, fmt.Errorf("qmp add-fd: %w", err)
	}
	return info.Set, info.FD, nil
}

// addLayerFile hands file to QEMU as a new fd set (read-write and
// read-only descriptors) and returns the set's id.
func addLayerFile(ctx context.Context, q *qmp, path string) (int, error) {
	set, _, err := addFD(ctx, q, path, os.O_RDWR, -1)
	if err != nil {
		return 0, err
	}
	_, _, err = addFD(ctx, q, path, os.O_RDONLY, set)
	return set, err
}

// fdSet is one of QEMU's fd sets as query-fdsets lists it.
type fdSet struct {
	ID  int `json:"fdset-id"`
	FDs []struct {
		FD     int    `json:"fd"`
		Opaque string `json:"opaque"`
	} `json:"fds"`
}

func fdSets(ctx context.Context, q *qmp) ([]fdSet, error) {
	r, err := q.call(ctx, "query-fdsets", nil, nil)
	if err != nil {
		return nil, err
	}
	var sets []fdSet
	if err := json.Unmarshal(r, &sets); err != nil {
		return nil, fmt.Errorf("qmp query-fdsets: %w", err)
	}
	return sets, nil
}

// dropWritable removes the writable descriptors of every layer but the
// node keep from QEMU's fd sets (QEMU closes them at once: its block
// layer holds its own read-only copies of frozen layers).
func dropWritable(ctx context.Context, q *qmp, keep string) error {
	sets, err := fdSets(ctx, q)
	if err != nil {
		return err
	}
	for _, s := range sets {
		for _, fd := range s.FDs {
			node, ok := strings.CutSuffix(fd.Opaque, ":rw")
			if !ok || node == keep {
				continue
			}
			if _, err := q.call(ctx, "remove-fd", map[string]any{"fdset-id": s.ID, "fd": fd.FD}, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// addOverlayNode hands QEMU the qcow2 overlay at path (a descriptor in a
// set of its own) as an unattached node without a backing yet, named
// NodeName(path); on failure nothing of it stays in QEMU.
func addOverlayNode(ctx context.Context, q *qmp, path string) (node string, set int, err error) {
	if set, err = addLayerFile(ctx, q, path); err != nil {
		return "", 0, err
	}
	node = NodeName(path)
	add := withLayerOpts(map[string]any{
		"driver": "qcow2", "node-name": node, "backing": nil,
		"file": map[string]any{"driver": "file", "filename": fmt.Sprintf("/dev/fdset/%d", set), "locking": "off"},
	})
	if _, err := q.call(ctx, "blockdev-add", add, nil); err != nil {
		_, _ = q.call(ctx, "remove-fd", map[string]any{"fdset-id": set}, nil)
		return "", 0, err
	}
	return node, set, nil
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
	node, set, err := addOverlayNode(ctx, q, path)
	if err != nil {
		return err
	}
	if _, err := q.call(ctx, "blockdev-snapshot", map[string]any{"node": "workspace", "overlay": node}, nil); err != nil {
		_, _ = q.call(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		_, _ = q.call(ctx, "remove-fd", map[string]any{"fdset-id": set}, nil)
		return err
	}
	// The old top is frozen now. Past this point the overlay is live
	// whatever happens, so a failure to drop its writable descriptor is
	// not the push's failure: the next push drops it.
	_ = dropWritable(ctx, q, node)
	return nil
}

// CommitLayer merges the layer file top into its parent base inside the
// running guest's chain (block-commit of an intermediate layer: QEMU
// copies top's clusters into base, then points top's child, the layer
// file child, at base, writing backingName into child's header). Until it
// returns, the chain through top still reads the same data, so a crash at
// any point leaves every state above base intact. QEMU then lets go of
// top (its file is the caller's to delete).
func CommitLayer(ctx context.Context, dir vmdir.Dir, top, base, child, backingName string) error {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	sets, err := fdSets(ctx, q)
	if err != nil {
		return err
	}
	// base and child are written (unless child is the live top, they are
	// frozen and held read-only): each gets a writable descriptor for the
	// merge, removed after it whatever its outcome. (QEMU fails to reopen
	// a layer without one, and 7.2 then exits.)
	for _, p := range []string{base, child} {
		set, writable := setOf(sets, p)
		if set < 0 || writable {
			continue // a QEMU started before tags still holds writable descriptors
		}
		_, fd, err := addFD(ctx, q, p, os.O_RDWR, set)
		if err != nil {
			return err
		}
		defer func() {
			_, _ = q.call(context.WithoutCancel(ctx), "remove-fd", map[string]any{"fdset-id": set, "fd": fd}, nil)
		}()
	}
	if err := commit(ctx, q, top, base, backingName); err != nil {
		return err
	}
	// top left the chain, but a node added by blockdev-add (or -blockdev)
	// stays until deleted, and its descriptors with it: the file's blocks
	// would stay allocated after the caller deletes it, until QEMU exits.
	// (A node -drive opened is not the monitor's to delete: it went with
	// the chain, so that error is expected.)
	_, _ = q.call(ctx, "blockdev-del", map[string]any{"node-name": NodeName(top)}, nil)
	if set, _ := setOf(sets, top); set >= 0 {
		_, _ = q.call(ctx, "remove-fd", map[string]any{"fdset-id": set}, nil)
	}
	return nil
}

// setOf finds the fd set of layer path by its descriptors' tags (-1: none)
// and whether it holds a writable descriptor.
func setOf(sets []fdSet, path string) (id int, writable bool) {
	id = -1
	for _, s := range sets {
		for _, fd := range s.FDs {
			switch fd.Opaque {
			case fdTag(path, false):
				id = s.ID
			case fdTag(path, true):
				id, writable = s.ID, true
			}
		}
	}
	return id, writable
}

// commit runs block-commit of top into base and waits for its end.
func commit(ctx context.Context, q *qmp, top, base, backingName string) error {
	job := "merge-" + NodeName(top)
	args := map[string]any{
		"job-id": job, "device": "workspace", "top-node": NodeName(top), "base-node": NodeName(base),
		"backing-file": backingName, "auto-dismiss": false,
	}
	if _, err := q.call(ctx, "block-commit", args, nil); err != nil {
		return err
	}
	for {
		status, jerr, found, err := jobStatus(ctx, q, job)
		if err != nil {
			return err
		}
		if !found {
			return nil
		}
		if status == "concluded" {
			_, _ = q.call(ctx, "job-dismiss", map[string]any{"id": job}, nil)
			if jerr != "" {
				return fmt.Errorf("merge %s into %s: %s", filepath.Base(top), filepath.Base(base), jerr)
			}
			return nil
		}
		if err := pollPause(ctx); err != nil {
			return err
		}
	}
}
