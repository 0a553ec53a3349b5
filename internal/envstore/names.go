package envstore

import (
	"regexp"
	"strings"
	"sync"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Names become path parts, so they are checked once here. A name is
// "distro:tag"; the ':' is stored as '_' on disk, which is why '_' itself is
// not allowed in names (the mapping must be reversible).
// They compile on first use: every pyro process (the guest agent included)
// imports this package, and bounded repetitions are slow to compile.
var (
	nameRE    = lazyRegexp(`^[a-z0-9][a-z0-9.-]{0,62}(:[a-z0-9][a-z0-9.-]{0,62})?$`)
	versionRE = lazyRegexp(`^[0-9A-Za-z][0-9A-Za-z.+~-]{0,62}$`)
	safeRE    = lazyRegexp(`^[a-z0-9][a-z0-9.-]{0,62}(_[a-z0-9][a-z0-9.-]{0,62})?$`)
)

func lazyRegexp(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

func validateName(name string) error {
	if !nameRE().MatchString(name) || strings.Contains(name, "..") {
		return errdefs.New(errdefs.ErrInvalidArgument, "names look like \"debian:12\"", "invalid environment name %q", name)
	}
	return nil
}

func validateVersion(v string) error {
	if !versionRE().MatchString(v) || strings.Contains(v, "..") {
		return errdefs.New(errdefs.ErrInvalidArgument, "", "invalid environment version %q", v)
	}
	return nil
}

// safeName maps a valid name to its directory name: "debian:12" -> "debian_12".
func safeName(name string) string { return strings.Replace(name, ":", "_", 1) }

// nameFromSafe reverses safeName; ok is false for directory names that no
// valid environment name maps to.
func nameFromSafe(dir string) (string, bool) {
	if !safeRE().MatchString(dir) || strings.Contains(dir, "..") {
		return "", false
	}
	return strings.Replace(dir, "_", ":", 1), true
}
