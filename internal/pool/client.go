package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/unixsock"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// Errors of a claim that mean "start a guest the usual way".
var (
	// ErrNoPool: no pool of this configuration runs.
	ErrNoPool = errors.New("no pool of this configuration")
	// ErrEmpty: the pool had no ready guest.
	ErrEmpty = errors.New("the pool has no ready guest")
)

// ClaimTimeout bounds a whole claim: a pool that does not hand out a guest
// quickly is slower than starting one.
const ClaimTimeout = 5 * time.Second

var tokenRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// Lease is a guest claimed from a pool. Close gives it back (the pool
// destroys it); so does the end of this process.
type Lease struct {
	Guest string
	Info  GuestInfo
	// HandoutMS is the pool's own hand-out time; ClaimMS the claim as
	// this process saw it (connect, hand-out, answer).
	HandoutMS float64
	ClaimMS   float64

	sock  string
	token string
	conn  net.Conn
}

// ownSocket reports whether path is a socket owned by this user (a pool
// of someone else is never used, even if it could be reached).
func ownSocket(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Getuid()
}

// call sends one request on a new connection and reads the reply line,
// within ctx. It returns the connection for a claim or attach to keep.
func call(ctx context.Context, sock string, req request) (reply, net.Conn, error) {
	if !ownSocket(sock) {
		return reply{}, nil, ErrNoPool
	}
	c, err := unixsock.Dial(ctx, sock)
	if err != nil {
		return reply{}, nil, fmt.Errorf("%w: %v", ErrNoPool, err)
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(ClaimTimeout)
	}
	_ = c.SetDeadline(dl)
	if err := writeJSONLine(c, req); err != nil {
		c.Close()
		return reply{}, nil, err
	}
	line, err := readLine(c, maxReplyBytes)
	if err != nil {
		c.Close()
		return reply{}, nil, fmt.Errorf("read pool reply: %w", err)
	}
	var r reply
	if err := json.Unmarshal(line, &r); err != nil {
		c.Close()
		return reply{}, nil, fmt.Errorf("decode pool reply: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return r, c, nil
}

// Claim asks the pool of key under root for a guest that becomes id.
// ErrNoPool and ErrEmpty mean there is none to have.
func Claim(ctx context.Context, root string, key Key, id string) (*Lease, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, ClaimTimeout)
	defer cancel()
	sock := SocketPath(root, key)
	k := key
	r, c, err := call(ctx, sock, request{Op: "claim", Key: &k, ID: id})
	if err != nil {
		return nil, err
	}
	if r.Error != "" {
		c.Close()
		if r.Empty {
			return nil, ErrEmpty
		}
		return nil, fmt.Errorf("pool refused the claim: %.200s", r.Error)
	}
	if r.Claimed == nil {
		c.Close()
		return nil, errors.New("pool answered a claim without a guest")
	}
	if err := validClaimed(*r.Claimed, key.Workspace); err != nil {
		c.Close()
		return nil, fmt.Errorf("pool answered a bad claim: %w", err)
	}
	cl := r.Claimed
	if key.Workspace {
		// A handed-over workspace is the claimer's only once it says so
		// within its deadline (the pool waits longer than that): an
		// answer read too late, or refused above, is the pool's to end,
		// never left to both or neither.
		dl, _ := ctx.Deadline()
		_ = c.SetWriteDeadline(dl)
		if err := writeJSONLine(c, request{Op: "adopt", Guest: cl.Guest}); err != nil {
			c.Close()
			return nil, fmt.Errorf("adopt pooled workspace: %w", err)
		}
		_ = c.SetWriteDeadline(time.Time{})
	}
	return &Lease{Guest: cl.Guest, Info: cl.GuestInfo, HandoutMS: cl.HandoutMS,
		ClaimMS: float64(time.Since(start).Microseconds()) / 1000, sock: sock, token: cl.Token, conn: c}, nil
}

// validClaimed checks what a pool says about the guest it handed out
// before any of it reaches a result.
func validClaimed(c Claimed, workspace bool) error {
	switch {
	case vmdir.ValidateID(c.Guest) != nil:
		return fmt.Errorf("guest id %.64q", c.Guest)
	case !tokenRE.MatchString(c.Token) && !(workspace && c.Token == ""):
		return errors.New("malformed token")
	case c.Backend != "qemu" && c.Backend != "firecracker":
		return fmt.Errorf("backend %.32q", c.Backend)
	case c.Isolation != "vm":
		return fmt.Errorf("isolation %.32q (pools hold VMs only)", c.Isolation)
	case c.Acceleration != "kvm" && c.Acceleration != "tcg":
		return fmt.Errorf("acceleration %.32q", c.Acceleration)
	case c.Start != "warm" && c.Start != "cold":
		return fmt.Errorf("start %.32q", c.Start)
	case c.BootMS < 0 || c.VMMPID < 0:
		return errors.New("negative boot time or pid")
	case math.IsNaN(c.HandoutMS) || c.HandoutMS < 0 || c.HandoutMS > float64(ClaimTimeout.Milliseconds()):
		return fmt.Errorf("hand-out time %v", c.HandoutMS)
	}
	return nil
}

// Dial opens a raw stream to the leased guest's agent (an agentapi
// proxied client's dial).
func (l *Lease) Dial(ctx context.Context) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	r, c, err := call(ctx, l.sock, request{Op: "attach", Guest: l.Guest, Token: l.token})
	if err != nil {
		return nil, err
	}
	if r.Error != "" {
		c.Close()
		return nil, fmt.Errorf("pool refused the agent stream: %.200s", r.Error)
	}
	return c, nil
}

// Close ends the lease: the pool destroys the guest.
func (l *Lease) Close() error { return l.conn.Close() }

// Query asks the pool at sock for its status.
func Query(ctx context.Context, sock string) (Status, error) {
	return statusCall(ctx, sock, "status")
}

// Stop asks the pool at sock to shut down; it answers its status first.
func Stop(ctx context.Context, sock string) (Status, error) {
	return statusCall(ctx, sock, "stop")
}

func statusCall(ctx context.Context, sock, op string) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	r, c, err := call(ctx, sock, request{Op: op})
	if err != nil {
		return Status{}, err
	}
	c.Close()
	if r.Error != "" {
		return Status{}, fmt.Errorf("pool: %.200s", r.Error)
	}
	if r.Status == nil {
		return Status{}, errors.New("pool answered without a status")
	}
	if r.Status.Socket != sock {
		// The pool speaks for its own socket only.
		r.Status.Socket = sock
	}
	return *r.Status, nil
}

// List returns the status of every pool under root, oldest first. Sockets
// of pools that died (their lock is free) are removed on the way.
func List(ctx context.Context, root string) ([]Status, error) {
	socks, err := filepath.Glob(filepath.Join(root, DirName, "*.sock"))
	if err != nil {
		return nil, err
	}
	var out []Status
	for _, sock := range socks {
		st, err := Query(ctx, sock)
		if err != nil {
			removeIfDead(sock)
			continue
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartedAt.Before(out[j].StartedAt) })
	return out, nil
}

// removeIfDead removes the socket of a pool whose process is gone: its
// lock can be taken.
func removeIfDead(sock string) {
	fd, err := unix.Open(lockPath(sock), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			_ = os.Remove(sock)
		}
		return
	}
	defer unix.Close(fd)
	if unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) == nil {
		_ = os.Remove(sock) // the lock file stays: a starting pool may hold it open
	}
}
