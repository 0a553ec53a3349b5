package hostres

import (
	"os"
	"strconv"
)

// Limits are the host-side caps on files that a guest or a model can make
// grow. Each has a default and an environment variable that overrides it
// (a positive integer; anything else keeps the default).
type Limits struct {
	// ConsoleLogBytes caps the guest's serial console log; one older
	// generation (console.log.1) is kept, so at most twice this is used.
	ConsoleLogBytes int64
}

// Environment variables overriding Limits.
const (
	ConsoleLogEnv = "PYRO_CONSOLE_LOG_MAX_BYTES"
)

// Defaults are the caps without overrides.
var Defaults = Limits{
	ConsoleLogBytes: 1 << 20,
}

// Load returns Defaults with the environment's overrides applied.
func Load() Limits {
	l := Defaults
	envInt(ConsoleLogEnv, &l.ConsoleLogBytes)
	return l
}

func envInt(name string, dst *int64) {
	if v, err := strconv.ParseInt(os.Getenv(name), 10, 64); err == nil && v > 0 {
		*dst = v
	}
}
