// Package pool keeps restored, paused guests of one configuration ready in
// a long-lived host process (`pyro pool start`, `pyro mcp serve --pool N`,
// an SDK client's StartPool) and hands one out to another process in a few
// milliseconds (issue #14, warm pool).
//
// A pool serves a unix socket under the state directory, named after its
// configuration key, so a `pyro run` in another process finds the pool of
// its own configuration with one stat and no scanning:
//
//	<state>/pools/<key id>.sock   the pool's socket (0600 in a 0700 dir)
//	<state>/pools/<key id>.lock   flock'd by the pool for its whole life
//
// Protocol: one request per connection, a JSON line (at most
// maxRequestBytes), answered by a JSON line (at most maxReplyBytes):
//
//	{"op":"status"}                      -> Status
//	{"op":"stop"}                        -> Status; the pool then shuts down
//	{"op":"claim","key":K,"id":ID}       -> Claimed; the connection stays open
//	                                        as the lease: when it closes (the
//	                                        claimer is done, or was killed),
//	                                        the pool destroys the guest
//	                                        (a workspace pool's claim has no
//	                                        lease: the claimer answers
//	                                        {"op":"adopt","guest":G} within
//	                                        its deadline and the workspace is
//	                                        its own; without that line, within
//	                                        ClaimTimeout, the pool ends it)
//	{"op":"attach","guest":G,"token":T}  -> {}; the connection is then a raw
//	                                        stream to the guest agent (one
//	                                        HTTP connection of the agent API)
//
// A claim is atomic: the pool takes a ready guest off its list under its
// lock, so two claimers never get the same guest. Before it answers, the
// pool resumes the guest and gives it the claimer's identity (fresh kernel
// RNG state before any user code, the clock now, hostname and machine-id
// of its own). An empty pool, or a key that does not match, is answered at
// once with an error, and the claimer starts a guest the usual way.
//
// Trust: both ends run as the same user (the pool checks the peer's uid,
// the claimer the socket's owner), but the claimer still bounds and
// validates every byte the pool sends: a pool is only a faster way to get
// a guest, never a source of truth about the run's configuration.
package pool

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"
)

// Limits of the protocol.
const (
	maxRequestBytes = 4 << 10
	maxReplyBytes   = 64 << 10
)

// DirName is the pools' directory under the state root.
const DirName = "pools"

// Key is the configuration a pooled guest has; a claim gets a guest only
// when every field is equal.
type Key struct {
	Environment string `json:"environment"`
	// EnvDigest is the environment's manifest digest: a pool of an older
	// build of the environment serves nobody.
	EnvDigest string `json:"environment_digest"`
	VCPUs     int    `json:"vcpu_count"`
	MemMiB    int    `json:"mem_mib"`
	// Network is the network class; pools serve "off" only (a pooled
	// guest has no NIC: a run's network policy and its stack belong to
	// the run).
	Network string `json:"network"`
	// Workspace: the pool serves `workspace create` instead of one-shot
	// runs. Its guests are whole workspaces (their own supervisor and
	// disks) and a claim hands one over for good: no lease, no token, the
	// claimed workspace outlives the pool.
	Workspace bool `json:"workspace"`
}

// ID names the key in file names: 16 hex digits of its digest.
func (k Key) ID() string {
	b, _ := json.Marshal(k)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// SocketPath is where the pool of key k listens under root.
func SocketPath(root string, k Key) string {
	return filepath.Join(root, DirName, k.ID()+".sock")
}

func lockPath(sock string) string {
	return sock[:len(sock)-len(".sock")] + ".lock"
}

// request is one line from a client.
type request struct {
	Op    string `json:"op"`
	Key   *Key   `json:"key,omitempty"`
	ID    string `json:"id,omitempty"`
	Guest string `json:"guest,omitempty"`
	Token string `json:"token,omitempty"`
}

// reply is one line from the pool: Error, or the op's answer inline.
type reply struct {
	Error string `json:"error,omitempty"`
	// Empty is set with Error when the pool had no ready guest.
	Empty   bool     `json:"empty,omitempty"`
	Status  *Status  `json:"status,omitempty"`
	Claimed *Claimed `json:"claimed,omitempty"`
}

// Claimed is the pool's answer to a claim.
type Claimed struct {
	Guest string `json:"guest"`
	Token string `json:"token"`
	GuestInfo
	// HandoutMS is the pool's own time from the claim to the answer
	// (resume and identity refresh included).
	HandoutMS float64 `json:"handout_ms"`
}

// GuestInfo describes a pooled guest.
type GuestInfo struct {
	Backend      string `json:"backend"`
	Acceleration string `json:"acceleration"`
	Isolation    string `json:"isolation"`
	// Start is how the pool got it: "warm" (restored) or "cold".
	Start string `json:"start"`
	// BootMS is how long the pool took to make it.
	BootMS int64 `json:"boot_ms"`
	VMMPID int   `json:"vmm_pid,omitempty"`
}

// Status is a pool's state.
type Status struct {
	Key    Key    `json:"key"`
	KeyID  string `json:"key_id"`
	Socket string `json:"socket"`
	PID    int    `json:"pid"`
	Size   int    `json:"size"`
	// Ready guests wait paused; Leased ones are in use by a claimer;
	// Filling is how many are being made now.
	Ready   int `json:"ready"`
	Leased  int `json:"leased"`
	Filling int `json:"filling"`
	// Served counts hand-outs; Failures counts guests the pool failed to
	// make or to hand out (LastError says the latest).
	Served         int64     `json:"served"`
	Failures       int64     `json:"failures"`
	LastError      string    `json:"last_error,omitempty"`
	LastHandoutMS  float64   `json:"last_handout_ms,omitempty"`
	StartedAt      time.Time `json:"started_at"`
	ReadyGuestsPID []int     `json:"ready_vmm_pids,omitempty"`
}

// readLine reads one newline-terminated line of at most limit bytes, one
// byte at a time: after an attach line the connection is a raw stream,
// and nothing past the newline may be swallowed by a buffer.
func readLine(r io.Reader, limit int) ([]byte, error) {
	var buf bytes.Buffer
	var b [1]byte
	for {
		n, err := r.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return buf.Bytes(), nil
			}
			if buf.Len() >= limit {
				return nil, fmt.Errorf("line longer than %d bytes", limit)
			}
			buf.WriteByte(b[0])
		}
		if err != nil {
			if errors.Is(err, io.EOF) && buf.Len() > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
