package envstore

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pyro-mcp/pyro/internal/catalog"
)

// DefaultMirror is used when neither the options, the environment nor the
// host's apt sources name one.
const DefaultMirror = "http://deb.debian.org/debian"

// MirrorEnv overrides the Debian mirror.
const MirrorEnv = "PYRO_DEBIAN_MIRROR"

// resolveMirror picks the mirror: explicit, else $PYRO_DEBIAN_MIRROR, else
// the first source in aptDir (normally /etc/apt) that carries the suite.
func resolveMirror(explicit, aptDir string) string {
	if explicit != "" {
		return explicit
	}
	if m := os.Getenv(MirrorEnv); m != "" {
		return m
	}
	if m := mirrorFromApt(aptDir, catalog.Suite); m != "" {
		return m
	}
	return DefaultMirror
}

// mirrorFromApt reads sources.list, then sources.list.d/*.list and *.sources
// in name order, and returns the first URI that carries suite.
func mirrorFromApt(aptDir, suite string) string {
	files := []string{filepath.Join(aptDir, "sources.list")}
	ents, _ := os.ReadDir(filepath.Join(aptDir, "sources.list.d"))
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".list") || strings.HasSuffix(e.Name(), ".sources") {
			files = append(files, filepath.Join(aptDir, "sources.list.d", e.Name()))
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var m string
		if strings.HasSuffix(f, ".sources") {
			m = mirrorFromDeb822(string(b), suite)
		} else {
			m = mirrorFromOneLine(string(b), suite)
		}
		if m != "" {
			return m
		}
	}
	return ""
}

// mirrorFromOneLine parses "deb [options] URI suite components..." lines.
func mirrorFromOneLine(text, suite string) string {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") { // options, possibly several words
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) >= 2 && f[1] == suite && isHTTP(f[0]) {
			return strings.TrimRight(f[0], "/")
		}
	}
	return ""
}

// mirrorFromDeb822 parses deb822 stanzas (Types, URIs, Suites, Enabled).
func mirrorFromDeb822(text, suite string) string {
	for _, stanza := range splitStanzas(text) {
		if strings.EqualFold(stanza["enabled"], "no") {
			continue
		}
		if !slices.Contains(strings.Fields(stanza["types"]), "deb") {
			continue
		}
		if !slices.Contains(strings.Fields(stanza["suites"]), suite) {
			continue
		}
		for _, u := range strings.Fields(stanza["uris"]) {
			if isHTTP(u) {
				return strings.TrimRight(u, "/")
			}
		}
	}
	return ""
}

func splitStanzas(text string) []map[string]string {
	var out []map[string]string
	cur := map[string]string{}
	last := ""
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur = map[string]string{}
		last = ""
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				cur[last] += " " + strings.TrimSpace(line)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			cur[last] = strings.TrimSpace(v)
		}
	}
	flush()
	return out
}

func isHTTP(u string) bool {
	return strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://")
}
