package netpolicy

import (
	"maps"
	"slices"
)

// presets are the names common tools need, kept short on purpose: a preset
// is a promise about what a tool reaches, so each name here is one that
// tool's default configuration actually contacts.
var presets = map[string][]string{
	// pip: the index and the files it links to.
	"pypi": {"pypi.org", "files.pythonhosted.org"},
	// npm and yarn's mirror of the same registry.
	"npm": {"registry.npmjs.org", "registry.yarnpkg.com"},
	// git over https, the API, release assets and raw files.
	"github": {"github.com", "*.github.com", "*.githubusercontent.com"},
	// apt with Debian's default sources.
	"debian": {"deb.debian.org", "security.debian.org", "*.debian.org"},
}

// PresetNames lists the presets as written in an allowlist ("@pypi", ...).
func PresetNames() []string {
	out := make([]string, 0, len(presets))
	for _, k := range slices.Sorted(maps.Keys(presets)) {
		out = append(out, "@"+k)
	}
	return out
}

// PresetHosts returns the entries a preset ("@pypi" or "pypi") expands to.
func PresetHosts(name string) ([]string, bool) {
	if len(name) > 0 && name[0] == '@' {
		name = name[1:]
	}
	hs, ok := presets[name]
	return slices.Clone(hs), ok
}
