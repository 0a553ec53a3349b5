package hostres

import (
	"io"
	"os"
	"strconv"

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
	return &capReader{r: r, left: max, max: max, what: what, env: env}
}

type capReader struct {
	r         io.Reader
	left, max int64
	what, env string
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left < 0 {
		return 0, c.err()
	}
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1] // one byte past the cap is enough to know
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.left < 0 {
		return 0, c.err()
	}
	return n, err
}

func (c *capReader) err() error {
	return errdefs.New(errdefs.ErrFailedPrecondition, "make it smaller, or raise "+c.env,
		"%s exceeds the host's cap of %d bytes", c.what, c.max)
}
