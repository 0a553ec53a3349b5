package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Quiet reports (agentapi/quiet.go): the epoch moves on at the start of
// every call that may change the guest (every call but a GET: exec, file
// writes, shells, services, jobs, freeze...), and the calls under way are
// counted. The guest is quiet when no such call is under way and no user
// process is left in the user cgroup: then nothing can change /workspace
// until the host's next call, which moves the epoch on.
type quiet struct {
	mu       sync.Mutex
	epoch    uint64
	inflight int
	// The manifest last reported: its epoch, and the upper disk's write
	// counters after the sync it followed. Counters unchanged after the
	// next sync mean not a byte reached the disk since: same manifest.
	sentEpoch  uint64
	sentWrites string
	// track names what changed since the listing last reported
	// (quiet_track.go); trackMu is held by the report using it.
	track   *upperTracker
	trackMu sync.Mutex
	// settled, when set, is closed when no call is under way any more
	// (a quiet report waits on it for the exec it follows to end).
	settled chan struct{}
}

// newQuiet starts the epoch at a random value: an epoch reported by an
// earlier agent process (before a restart of the guest or of the agent)
// never matches this one's.
func newQuiet() *quiet {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &quiet{epoch: binary.LittleEndian.Uint64(b[:])>>1 + 1}
}

// reseed starts the epoch afresh from host entropy (after a restore from a
// saved state), forgetting the last listing. The host's bytes differ for
// every restored guest, so their fold is the new epoch: hashing them with
// bytes of the guest's own RNG ran SHA-256 and the kernel's getrandom, code
// that a restored guest translates afresh (TCG), on the identity call that
// every warm start waits for (3-11 ms).
func (q *quiet) reseed(entropy []byte) {
	var fold [8]byte
	for i, b := range entropy {
		fold[i%8] ^= b
	}
	q.mu.Lock()
	q.epoch = binary.LittleEndian.Uint64(fold[:])>>1 + 1
	q.sentEpoch, q.sentWrites = 0, ""
	tr := q.track
	q.track = nil
	q.mu.Unlock()
	if tr != nil {
		q.trackMu.Lock()
		tr.close()
		q.trackMu.Unlock()
	}
}

// markedTracker returns the tracker, made afresh when there is none or
// when the kernel dropped its marks: the upper disk was unmounted since
// (a host push releases /workspace and the guest mounts it again), and a
// tracker without marks would make every later report a full listing
// (a 1,000-file workspace's checkpoint cost 80-140 ms instead of 15-40
// after one push). The caller holds trackMu.
func (q *quiet) markedTracker(upper, merged string) (*upperTracker, error) {
	q.mu.Lock()
	tr := q.track
	q.mu.Unlock()
	if tr != nil && tr.marked() {
		return tr, nil
	}
	if tr != nil {
		tr.close() // its drain loop ends: it is no longer the agent's
	}
	tr, err := newUpperTracker(upper, merged)
	if err != nil {
		tr = nil
	}
	q.mu.Lock()
	q.track = tr
	q.mu.Unlock()
	if tr != nil {
		go q.drainWrittenLoop(tr)
	}
	return tr, err
}

func (q *quiet) begin() {
	q.mu.Lock()
	q.epoch++
	q.inflight++
	q.mu.Unlock()
}

func (q *quiet) end() {
	q.mu.Lock()
	q.inflight--
	if q.inflight == 0 && q.settled != nil {
		close(q.settled)
		q.settled = nil
	}
	q.mu.Unlock()
}

// settle waits until no call is under way (or ctx ends: ok false) and
// returns the epoch then.
func (q *quiet) settle(ctx context.Context) (e uint64, ok bool) {
	for {
		q.mu.Lock()
		if q.inflight == 0 {
			e = q.epoch
			q.mu.Unlock()
			return e, true
		}
		if q.settled == nil {
			q.settled = make(chan struct{})
		}
		ch := q.settled
		q.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, false
		}
	}
}

// claim begins a call only if the guest is still quiet at epoch expect.
func (q *quiet) claim(expect uint64, idle func() bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	ok := expect != 0 && q.epoch == expect && q.inflight == 0 && idle()
	if ok {
		q.epoch++
		q.inflight++
	}
	return ok
}

func (q *quiet) current() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.epoch
}

// idleAt reports whether the epoch is still e and no call is under way.
func (q *quiet) idleAt(e uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.epoch == e && q.inflight == 0
}

// tracked wraps the API: every call but a GET moves the epoch on, and
// PathExecQuiet runs only while its expected epoch holds.
func (s *Agent) tracked(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			h.ServeHTTP(w, r)
			return
		}
		switch {
		case r.URL.Path == agentapi.PathExecQuiet:
			expect, _ := strconv.ParseUint(r.URL.Query().Get("expect"), 10, 64)
			if !s.quiet.claim(expect, s.userIdle) {
				s.fail(w, errorf(errdefs.ErrFailedPrecondition, "the guest changed since quiet epoch %d", expect))
				return
			}
		case r.URL.Path == agentapi.PathLayerRelease && r.URL.Query().Has("expect"):
			// A host push's release (workspace_release.go): still quiet
			// at the epoch whose listing the host holds, the release
			// need not list the upper layer; else it lists as usual.
			expect, _ := strconv.ParseUint(r.URL.Query().Get("expect"), 10, 64)
			if s.quiet.claim(expect, s.userIdle) {
				r = r.WithContext(context.WithValue(r.Context(), quietClaim{}, expect))
			} else {
				s.quiet.begin()
			}
		default:
			s.quiet.begin()
		}
		defer s.quiet.end()
		h.ServeHTTP(w, r)
	})
}

// quietClaim is the request context key of a claimed quiet epoch.
type quietClaim struct{}

// claimedQuiet returns the quiet epoch the request claimed (0: none).
func claimedQuiet(r *http.Request) uint64 {
	e, _ := r.Context().Value(quietClaim{}).(uint64)
	return e
}

// userIdle reports whether no user process is left (false without a user
// cgroup: then nothing says so).
func (s *Agent) userIdle() bool {
	if s.user == nil {
		return false
	}
	return s.user.unpopulated()
}

// quietWait bounds how long a quiet report waits for the calls under
// way to end (the exec it follows finishes its leaf after its answer).
const quietWait = 2 * time.Second

// handleQuiet answers GET /v1/quiet?have=N&delta=1 (agentapi/quiet.go)
// with the quiet report of now, or null when the guest is not quiet. A
// GET moves no epoch: the report is of the state the last call left. It
// waits (bounded) for the calls under way to end, then checks that no user
// process is left, syncs /workspace (a process that wrote after the last
// exec's sync and exited since left dirty pages; nothing can write after
// this check until a call moves the epoch on) and lists.
func (s *Agent) handleQuiet(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	have, _ := strconv.ParseUint(q.Get("have"), 10, 64)
	ctx, cancel := context.WithTimeout(r.Context(), quietWait)
	defer cancel()
	var rep *agentapi.QuietReport
	if e, ok := s.quiet.settle(ctx); ok && s.layers.present() && s.userIdle() {
		s.syncWorkspace()
		rep = s.quietReport(e, have, q.Get("delta") == "1")
	}
	writeJSON(w, http.StatusOK, rep)
}

// quietReport is the report of the guest at epoch e, called with no call
// under way, no user process left and /workspace synced. nil: the guest
// moved on (or /workspace is not layered, or the listing too large to
// carry). With delta, a report whose upper layer changed since the
// listing of epoch have says only what changed (quiet_track.go) when it
// can.
func (s *Agent) quietReport(e, have uint64, delta bool) *agentapi.QuietReport {
	if !s.layers.present() || !s.userIdle() || !s.quiet.idleAt(e) {
		return nil
	}
	// The report owns the tracker (the background drain holds it only
	// while it reads the queue).
	s.quiet.trackMu.Lock()
	defer s.quiet.trackMu.Unlock()
	writes, err := diskWrites(s.layers.upperMount)
	if err != nil {
		return nil
	}
	rep := &agentapi.QuietReport{Epoch: e}
	s.quiet.mu.Lock()
	same := have != 0 && have == s.quiet.sentEpoch && writes == s.quiet.sentWrites
	tr := s.quiet.track
	s.quiet.mu.Unlock()
	var full []agentapi.LayerEntry
	var d agentapi.LayerDelta
	switch {
	case same:
		rep.SameAs = have
	case delta && tr != nil && tr.usable(have):
		var err error
		if d, _, err = tr.delta(); err == nil {
			if len(d.Removed) == 0 && len(d.Changed) == 0 {
				rep.SameAs = have
			} else {
				rep.Delta = &d
			}
			break
		}
		tr.lose("delta: " + err.Error())
		fallthrough
	default:
		if tr != nil && delta {
			s.log.Debug("quiet report lists the upper layer whole", "why", tr.why)
		}
		if delta {
			// Marked before the walk: nothing changes while the guest
			// is quiet, and every change after the walk is named.
			if tr, err = s.quiet.markedTracker(upperDir(s.layers.upperMount), s.workspaceDir); err != nil {
				s.log.Debug("no incremental quiet listing", "err", err)
			}
		}
		// Too large to carry: the walk stops at the bound.
		m, err := manifestWithin(upperDir(s.layers.upperMount), agentapi.MaxQuietManifestBytes)
		if err != nil {
			return nil
		}
		if m == nil {
			m = []agentapi.LayerEntry{}
		}
		full = m
		rep.Manifest = &agentapi.LayerManifest{Entries: m}
	}
	// Still nothing under way and no process: the listing is of the
	// state at e.
	if !s.userIdle() || !s.quiet.idleAt(e) {
		return nil
	}
	// The host keeps the listing of the epoch it names (a SameAs report
	// leaves it at have).
	sent := e
	switch {
	case same:
		return rep
	case rep.SameAs != 0:
		sent = have
		tr.commit(have, d)
	case rep.Delta != nil:
		tr.commit(e, d)
	case tr != nil:
		tr.reset(e, full)
	}
	s.quiet.mu.Lock()
	s.quiet.sentEpoch, s.quiet.sentWrites = sent, writes
	s.quiet.mu.Unlock()
	return rep
}

// diskWrites returns the sectors written and discarded on the block
// device mounted at mount (/sys/dev/block/M:N/stat): they move whenever
// anything reaches the disk. Request counts are left out: the empty write
// that carries a sync's flush counts as a write request of no sectors.
func diskWrites(mount string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(mount, &st); err != nil {
		return "", err
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/stat", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		return "", err
	}
	return sectorsWritten(string(b))
}

// sectorsWritten picks the sectors written and discarded out of a block
// device's stat line.
func sectorsWritten(stat string) (string, error) {
	f := strings.Fields(stat)
	if len(f) < 11 {
		return "", fmt.Errorf("short disk stat %q", stat)
	}
	out := f[6]
	if len(f) >= 15 {
		out += " " + f[13]
	}
	return out, nil
}
