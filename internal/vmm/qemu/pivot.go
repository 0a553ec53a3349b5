package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Switching a running guest's workspace disk to another raw root layer
// (a host push into a running workspace: the host wrote a new layer while
// the guest held /workspace unmounted). Measured on QEMU 7.2 under
// pyro's -sandbox: blockdev-add the new file as a raw node, then a
// blockdev-mirror from the live top to it with sync "none" (nothing is
// copied: the guest writes nothing meanwhile) is ready at once, and
// job-complete puts the new node in the old top's place under the
// device. The guest sees the same virtio disk; what it reads from now on
// comes from the new file. The old chain's nodes and descriptors are
// released so that their files can be deleted.

// pivotJob bounds the mirror job's wait (it copies nothing).
const pivotJob = 30 * time.Second

// PivotTop makes the running guest's workspace disk the raw image at path
// (the same size as the disk), in place of the live chain whose files are
// old (root first). On error QEMU may still write the old top: the caller
// asks LiveNode which one it writes.
func PivotTop(ctx context.Context, dir vmdir.Dir, path string, old []string) error {
	q, err := dialQMP(ctx, dir.Path(vmdir.QMPSock))
	if err != nil {
		return err
	}
	defer q.Close()
	live, err := liveNode(ctx, q)
	if err != nil {
		return err
	}
	node := NodeName(path)
	if live == node {
		return nil // switched already (an earlier answer was lost)
	}
	set, err := addLayerFile(ctx, q, path)
	if err != nil {
		return err
	}
	add := withLayerOpts(map[string]any{
		"driver": "raw", "node-name": node,
		"file": map[string]any{"driver": "file", "filename": fmt.Sprintf("/dev/fdset/%d", set), "locking": "off"},
	})
	if _, err := q.call(ctx, "blockdev-add", add, nil); err != nil {
		_, _ = q.call(ctx, "remove-fd", map[string]any{"fdset-id": set}, nil)
		return err
	}
	unadd := func() {
		c := context.WithoutCancel(ctx)
		_, _ = q.call(c, "blockdev-del", map[string]any{"node-name": node}, nil)
		_, _ = q.call(c, "remove-fd", map[string]any{"fdset-id": set}, nil)
	}
	job := "pivot-" + node
	args := map[string]any{"job-id": job, "device": live, "target": node, "sync": "none", "auto-dismiss": false}
	if _, err := q.call(ctx, "blockdev-mirror", args, nil); err != nil {
		unadd()
		return err
	}
	jctx, cancel := context.WithTimeout(ctx, pivotJob)
	defer cancel()
	if err := waitJob(jctx, q, job, "ready"); err != nil {
		_, _ = q.call(context.WithoutCancel(ctx), "job-cancel", map[string]any{"id": job}, nil)
		_ = waitJob(context.WithoutCancel(jctx), q, job, "concluded")
		_, _ = q.call(context.WithoutCancel(ctx), "job-dismiss", map[string]any{"id": job}, nil)
		unadd()
		return err
	}
	if _, err := q.call(ctx, "job-complete", map[string]any{"id": job}, nil); err != nil {
		return err
	}
	if err := waitJob(jctx, q, job, "concluded"); err != nil {
		return err
	}
	_, _ = q.call(ctx, "job-dismiss", map[string]any{"id": job}, nil)
	if now, err := liveNode(ctx, q); err != nil || now != node {
		if err == nil {
			err = fmt.Errorf("the guest still writes node %q after the switch", now)
		}
		return err
	}
	// Past the switch the new node is the top whatever happens next. Its
	// writable descriptor goes as a staged overlay's does (blocknext.go):
	// the node keeps its own. The old chain's nodes (those -blockdev or
	// blockdev-add made: the -drive one went with the switch) and their
	// sets go, so QEMU holds none of their files.
	_ = dropWritable(ctx, q, "")
	sets, err := fdSets(ctx, q)
	if err != nil {
		return nil
	}
	for i := len(old) - 1; i >= 0; i-- {
		_, _ = q.call(ctx, "blockdev-del", map[string]any{"node-name": NodeName(old[i])}, nil)
		if s, _ := setOf(sets, old[i]); s >= 0 {
			_, _ = q.call(ctx, "remove-fd", map[string]any{"fdset-id": s}, nil)
		}
	}
	return nil
}

// waitJob waits until job reaches status want (or concluded, with its
// error when it has one).
func waitJob(ctx context.Context, q *qmp, job, want string) error {
	for {
		status, jerr, found, err := jobStatus(ctx, q, job)
		switch {
		case err != nil:
			return err
		case !found:
			return fmt.Errorf("switch the workspace disk: job %s is gone", job)
		case status == want && (want != "concluded" || jerr == ""):
			return nil
		case status == "concluded" && jerr != "":
			return fmt.Errorf("switch the workspace disk: %s", jerr)
		case status == "concluded":
			return fmt.Errorf("switch the workspace disk: job ended before %s", want)
		}
		if err := pollPause(ctx); err != nil {
			return err
		}
	}
}

// jobStatus is a block job's status and error as query-jobs tells them;
// found is false once QEMU no longer lists it.
func jobStatus(ctx context.Context, q *qmp, job string) (status, jobErr string, found bool, err error) {
	r, err := q.call(ctx, "query-jobs", nil, nil)
	if err != nil {
		return "", "", false, err
	}
	var jobs []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if err := json.Unmarshal(r, &jobs); err != nil {
		return "", "", false, fmt.Errorf("qmp query-jobs: %w", err)
	}
	for _, j := range jobs {
		if j.ID == job {
			return j.Status, j.Error, true, nil
		}
	}
	return "", "", false, nil
}

// pollPause waits between two polls of a block job.
func pollPause(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2 * time.Millisecond):
		return nil
	}
}

// liveNode is LiveNode on an open connection.
func liveNode(ctx context.Context, q *qmp) (string, error) {
	r, err := q.call(ctx, "query-block", nil, nil)
	if err != nil {
		return "", err
	}
	var devs []struct {
		Device   string `json:"device"`
		Inserted *struct {
			NodeName string `json:"node-name"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(r, &devs); err != nil {
		return "", fmt.Errorf("qmp query-block: %w", err)
	}
	for _, d := range devs {
		if d.Device == "workspace" && d.Inserted != nil {
			return d.Inserted.NodeName, nil
		}
	}
	return "", os.ErrNotExist
}
