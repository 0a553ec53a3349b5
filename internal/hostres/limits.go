package hostres

import (
	"io"
	"os"
	"strconv"
	"sync/atomic"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Limits are the host-side caps on files that a guest or a model can make
// grow. Each has a default and an environment variable that overrides it
// (a positive integer; anything else keeps the default).
type Limits struct {
	// ConsoleLogBytes caps the guest's serial console log; one older
	// generation (console.log.1) is kept, so at most twice this is used.
	ConsoleLogBytes int64
	// SnapshotBytes caps one workspace snapshot (a tar of /workspace sent
	// by the guest); SnapshotCount caps the named snapshots per workspace.
	SnapshotBytes int64
	SnapshotCount int64
	// ExportBytes caps what one export writes on the host.
	ExportBytes int64
	// HistoryLineBytes caps the command recorded in one history line (the
	// output kept per line has its own, smaller excerpt).
	HistoryLineBytes int64
}

// Environment variables overriding Limits.
const (
	ConsoleLogEnv    = "PYRO_CONSOLE_LOG_MAX_BYTES"
	SnapshotBytesEnv = "PYRO_SNAPSHOT_MAX_BYTES"
	SnapshotCountEnv = "PYRO_MAX_SNAPSHOTS"
	ExportBytesEnv   = "PYRO_EXPORT_MAX_BYTES"
	HistoryLineEnv   = "PYRO_HISTORY_LINE_MAX_BYTES"
)

// Defaults are the caps without overrides.
var Defaults = Limits{
	ConsoleLogBytes:  1 << 20,
	SnapshotBytes:    8 << 30, // the default workspace disk's size
	SnapshotCount:    64,
	ExportBytes:      8 << 30,
	HistoryLineBytes: 16 << 10,
}

// Load returns Defaults with the environment's overrides applied.
func Load() Limits {
	l := Defaults
	envInt(ConsoleLogEnv, &l.ConsoleLogBytes)
	envInt(SnapshotBytesEnv, &l.SnapshotBytes)
	envInt(SnapshotCountEnv, &l.SnapshotCount)
	envInt(ExportBytesEnv, &l.ExportBytes)
	envInt(HistoryLineEnv, &l.HistoryLineBytes)
	return l
}

func envInt(name string, dst *int64) {
	if v, err := strconv.ParseInt(os.Getenv(name), 10, 64); err == nil && v > 0 {
		*dst = v
	}
}

// CapReader reads r but fails, once more than max bytes came, with a
// failed-precondition error naming what was read and the variable that
// raises the cap. The caller discards what it wrote.
func CapReader(r io.Reader, max int64, what, env string) io.Reader {
	return NewBudget(max, what, env).Reader(r)
}

// Budget is a cap shared by several readers: together they may read max
// bytes, and the one that reads past it fails as CapReader's does. For
// streams of one operation that the host stores side by side (a diff's
// two sides), so their sum is bounded, not each one.
type Budget struct {
	left      atomic.Int64
	max       int64
	what, env string
}

// NewBudget returns a budget of max bytes.
func NewBudget(max int64, what, env string) *Budget {
	b := &Budget{max: max, what: what, env: env}
	b.left.Store(max)
	return b
}

// Reader reads r against the budget.
func (b *Budget) Reader(r io.Reader) io.Reader { return &capReader{r: r, b: b} }

type capReader struct {
	r io.Reader
	b *Budget
}

func (c *capReader) Read(p []byte) (int, error) {
	left := c.b.left.Load()
	if left < 0 {
		return 0, c.b.err()
	}
	if int64(len(p)) > left+1 {
		p = p[:left+1] // one byte past the cap is enough to know
	}
	n, err := c.r.Read(p)
	if c.b.left.Add(-int64(n)) < 0 {
		return 0, c.b.err()
	}
	return n, err
}

func (b *Budget) err() error {
	return errdefs.New(errdefs.ErrFailedPrecondition, "make it smaller, or raise "+b.env,
		"%s exceeds the host's cap of %d bytes", b.what, b.max)
}
