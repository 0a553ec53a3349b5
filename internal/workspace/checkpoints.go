package workspace

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/hostres"
)

// Checkpoints of a layered workspace: before each command (exec, sync
// push, file write, patch apply, service start) the upper layer is frozen
// and copied, with the guest's listing of it (its manifest). Undo restores
// a copy; diff --since compares two manifests. Each checkpoint is a full
// copy of the upper layer, so its cost follows what changed since the
// baseline; the oldest are dropped past a count and a total size.

// CheckpointsDir holds a workspace's checkpoints: N.img, N.manifest.json
// and N.json (the record, written last).
const CheckpointsDir = "checkpoints"

// BaseIndexFile lists the baseline's entries (written when the baseline
// is built, from the host's own unpacked tree, so it is trusted).
const BaseIndexFile = "base.index"

// Caps of a workspace's checkpoints, from the environment.
const (
	CheckpointCountEnv = "PYRO_CHECKPOINT_MAX_COUNT"
	CheckpointBytesEnv = "PYRO_CHECKPOINT_MAX_BYTES"
)

// CheckpointCaps returns the count and size caps of a workspace's
// checkpoints.
func CheckpointCaps() (count int, bytes int64) { return checkpointCaps() }

func checkpointCaps() (count int, bytes int64) {
	count, bytes = 50, 4<<30
	if v, err := strconv.Atoi(os.Getenv(CheckpointCountEnv)); err == nil && v > 0 {
		count = v
	}
	if v, err := strconv.ParseInt(os.Getenv(CheckpointBytesEnv), 10, 64); err == nil && v > 0 {
		bytes = v
	}
	return count, bytes
}

// Checkpoint is the state of /workspace before one command.
type Checkpoint struct {
	Number    int       `json:"number"`
	Command   string    `json:"command"` // what ran after it ("exec: make", "sync push DIR")
	CreatedAt time.Time `json:"created_at"`
	Bytes     int64     `json:"bytes"` // data the upper layer copy holds
	SHA256    string    `json:"sha256"`
	// BytesChanged is the size of the files the command after it
	// touched (filled in by List from the next checkpoint; -1 while that
	// command is the latest).
	BytesChanged int64 `json:"bytes_changed"`
}

// Checkpoints stores checkpoints in Dir.
type Checkpoints struct{ Dir string }

func (c Checkpoints) path(n int, suffix string) string {
	return filepath.Join(c.Dir, strconv.Itoa(n)+suffix)
}

// Take stores the upper layer image upper (frozen by the caller) and its
// manifest as the next checkpoint, then drops the oldest past the caps.
// (Checkpoints of a chained upper layer are TakeLayer's, chain_records.go.)
func (c Checkpoints) Take(upper string, m agentapi.LayerManifest, command string) (Checkpoint, error) {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return Checkpoint{}, err
	}
	n, err := c.nextNumber()
	if err != nil {
		return Checkpoint{}, err
	}
	_, maxBytes := checkpointCaps()
	sum, data, err := CopyImage(upper, c.path(n, ".img"), maxBytes, "checkpoint", CheckpointBytesEnv)
	if err != nil {
		return Checkpoint{}, err
	}
	return c.finish(n, m, command, data, sum)
}

// nextNumber returns the next checkpoint number: numbers are never
// reused, even after an undo. Only names are read (a record a crash left
// half written still holds its number).
func (c Checkpoints) nextNumber() (int, error) {
	ents, err := os.ReadDir(c.Dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	n := 1
	for _, e := range ents {
		if num, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			if v, err := strconv.Atoi(num); err == nil && v >= n {
				n = v + 1
			}
		}
	}
	if last, err := c.lastNumber(); err == nil && last >= n {
		n = last + 1
	}
	return n, nil
}

// finish writes checkpoint n's manifest and record (last: a checkpoint
// exists once its record does) and prunes past the caps.
func (c Checkpoints) finish(n int, m agentapi.LayerManifest, command string, data int64, sum string) (Checkpoint, error) {
	b, _ := json.Marshal(m)
	if err := replaceFile(c.path(n, ".manifest.json"), b, true); err != nil {
		c.remove(n)
		return Checkpoint{}, err
	}
	cp, err := c.record(n, command, data, sum, true)
	if err == nil {
		_ = replaceFile(filepath.Join(c.Dir, "last"), []byte(strconv.Itoa(n)), true)
		c.Prune()
	}
	return cp, err
}

// record writes checkpoint n's record, durably with sync (the callers
// prune).
func (c Checkpoints) record(n int, command string, data int64, sum string, sync bool) (Checkpoint, error) {
	if len(command) > int(hostres.Load().HistoryLineBytes) {
		command = command[:hostres.Load().HistoryLineBytes] + "..."
	}
	cp := Checkpoint{Number: n, Command: command, CreatedAt: time.Now().UTC(), Bytes: data, SHA256: sum}
	b, _ := json.Marshal(cp)
	if err := replaceFile(c.path(n, ".json"), b, sync); err != nil {
		c.remove(n)
		return Checkpoint{}, err
	}
	return cp, nil
}

func (c Checkpoints) lastNumber() (int, error) {
	b, err := os.ReadFile(filepath.Join(c.Dir, "last"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Prune drops the oldest checkpoints past the count and size caps (a
// chained checkpoint's caller does it after the command started, off the
// path of the checkpoint itself).
func (c Checkpoints) Prune() { c.PruneTo(checkpointCaps()) }

// PruneTo is Prune with the caps given (the caller's, when the
// housekeeping runs in another process).
func (c Checkpoints) PruneTo(maxCount int, maxBytes int64) {
	list, err := c.records()
	if err != nil {
		return
	}
	var total int64
	for _, cp := range list {
		total += cp.Bytes
	}
	for len(list) > 1 && (len(list) > maxCount || total > maxBytes) {
		c.remove(list[0].Number)
		total -= list[0].Bytes
		list = list[1:]
	}
}

// remove deletes checkpoint n, its record first (a crash in between
// leaves unnamed data, never a record without its data).
func (c Checkpoints) remove(n int) {
	_ = os.Remove(c.path(n, ".json"))
	_ = os.Remove(c.path(n, ".manifest.json"))
	_ = os.Remove(c.path(n, ".img"))
	_ = os.Remove(c.path(n, ".layer"))
}

// records returns the valid checkpoint records, oldest first.
func (c Checkpoints) records() ([]Checkpoint, error) {
	ents, err := os.ReadDir(c.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return []Checkpoint{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []Checkpoint{}
	for _, e := range ents {
		num, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(num)
		if err != nil || n <= 0 || strconv.Itoa(n) != num {
			continue
		}
		if cp, err := c.Get(n); err == nil {
			out = append(out, cp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out, nil
}

// Get returns checkpoint n's record.
func (c Checkpoints) Get(n int) (Checkpoint, error) {
	var cp Checkpoint
	b, err := os.ReadFile(c.path(n, ".json"))
	if err != nil {
		return cp, errdefs.New(errdefs.ErrNotFound, "list them with `pyro workspace checkpoint list`", "checkpoint %d not found", n)
	}
	if len(b) > 64<<10 || json.Unmarshal(b, &cp) != nil || cp.Number != n || !isSHA256(cp.SHA256) {
		return Checkpoint{}, errdefs.New(errdefs.ErrFailedPrecondition, "undo to another checkpoint", "checkpoint %d has a damaged record", n)
	}
	return cp, nil
}

// List returns the checkpoints, oldest first, with BytesChanged filled in.
func (c Checkpoints) List() ([]Checkpoint, error) {
	list, err := c.records()
	if err != nil {
		return nil, err
	}
	base := c.baseIndex()
	for i := range list {
		list[i].BytesChanged = -1
		if i+1 < len(list) {
			a, errA := c.Manifest(list[i].Number)
			b, errB := c.Manifest(list[i+1].Number)
			if errA == nil && errB == nil {
				list[i].BytesChanged = touchedBytes(CompareManifests(a, b, base), b)
			}
		}
	}
	return list, nil
}

// Manifest returns checkpoint n's manifest.
func (c Checkpoints) Manifest(n int) (agentapi.LayerManifest, error) {
	var m agentapi.LayerManifest
	f, err := os.Open(c.path(n, ".manifest.json"))
	if err != nil {
		return m, errdefs.New(errdefs.ErrNotFound, "list them with `pyro workspace checkpoint list`", "checkpoint %d not found", n)
	}
	defer f.Close()
	if err := json.NewDecoder(bufio.NewReader(f)).Decode(&m); err != nil {
		return m, fmt.Errorf("checkpoint %d manifest: %w", n, err)
	}
	return m, nil
}

// Verify checks checkpoint n's image against its digest and returns its
// path. A damaged checkpoint is never restored.
func (c Checkpoints) Verify(n int) (string, error) {
	cp, err := c.Get(n)
	if err != nil {
		return "", err
	}
	p := c.path(n, ".img")
	sum, _, err := ImageDigest(p)
	if err != nil {
		return "", errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "", "checkpoint %d is missing its data", n)
	}
	if sum != cp.SHA256 {
		return "", errdefs.New(errdefs.ErrFailedPrecondition, "undo to another checkpoint", "checkpoint %d is damaged", n)
	}
	return p, nil
}

// DropFrom removes checkpoints n and later (after an undo to n, they
// describe a future that no longer exists).
func (c Checkpoints) DropFrom(n int) error {
	list, err := c.records()
	if err != nil {
		return err
	}
	if len(list) > 0 {
		c.holdNumber(list[len(list)-1].Number)
	}
	for i := len(list) - 1; i >= 0; i-- {
		if list[i].Number >= n {
			c.remove(list[i].Number)
		}
	}
	return nil
}

// Drop removes checkpoint n alone: a later one, taken meanwhile by
// another call, stays. The caller holds the layer lock.
func (c Checkpoints) Drop(n int) {
	c.holdNumber(n)
	c.remove(n)
}

// holdNumber keeps number n from being taken again once its record goes
// ("last" holds the highest number a removed record had; while a record
// exists its name holds its number). Prune needs none: it keeps the
// newest record.
func (c Checkpoints) holdNumber(n int) {
	if last, err := c.lastNumber(); err == nil && last >= n {
		return
	}
	_ = replaceFile(filepath.Join(c.Dir, "last"), []byte(strconv.Itoa(n)), true)
}

// Last returns the newest checkpoint's number (0: none).
func (c Checkpoints) Last() int {
	list, _ := c.records()
	if len(list) == 0 {
		return 0
	}
	return list[len(list)-1].Number
}

func (c Checkpoints) baseIndex() BaseIndex {
	idx, _ := ReadBaseIndex(filepath.Join(filepath.Dir(c.Dir), BaseIndexFile))
	return idx
}

// BaseIndexOf returns the baseline index beside a checkpoints directory.
func (c Checkpoints) BaseIndex() BaseIndex { return c.baseIndex() }

// replaceFile replaces p with b through a temporary file of its own beside
// it and a rename: a reader (and a process killed half way) sees the old
// content or the new, never a part. With sync the new content is flushed
// to the disk before the rename, for the records a host crash must not
// tear; the directory is not synced (fsutil.WriteFileAtomic does that too):
// on the journaled file systems pyro's state lives on, the rename commits
// with the next fsync of any file, and the callers' crash argument (kill
// -9 of any process) needs no fsync at all (see takeLayer).
func replaceFile(p string, b []byte, sync bool) error {
	return replaceFileWith(p, sync, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}
