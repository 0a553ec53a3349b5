// Package oci turns OCI and Docker images into root trees on the host: it
// resolves a reference (a registry, an OCI layout archive or a `docker
// save` archive), picks the linux/amd64 image, and applies its layers with
// whiteouts into a directory under the same archive safety rules as
// seeding (package tarutil). It also pushes and pulls pyro's own
// environments as OCI artifacts. It never prints; progress goes to a
// callback.
package oci

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Prefixes of local archive references.
const (
	OCIArchivePrefix    = "oci-archive:"
	DockerArchivePrefix = "docker-archive:"
)

// Source kinds.
const (
	KindRegistry      = "registry"
	KindOCIArchive    = "oci-archive"
	KindDockerArchive = "docker-archive"
)

// IsReference reports whether s names an image rather than a catalog
// environment. The rule, so that nothing is ambiguous: s is an image
// reference when it starts with "oci-archive:" or "docker-archive:", or
// contains a "/" or an "@". Catalog names ("debian:12") never do. So
// Docker Hub's python image is "docker.io/library/python:3.12-slim" (or
// "library/python:3.12-slim"), never "python:3.12-slim".
func IsReference(s string) bool {
	return strings.HasPrefix(s, OCIArchivePrefix) || strings.HasPrefix(s, DockerArchivePrefix) ||
		strings.ContainsAny(s, "/@")
}

// Source is a parsed image reference.
type Source struct {
	Kind string
	Ref  name.Reference // KindRegistry
	Path string         // the archive kinds
}

// String is the canonical form: the full registry reference
// ("index.docker.io/library/python:3.12-slim") or "kind:path".
func (s Source) String() string {
	if s.Kind == KindRegistry {
		return s.Ref.Name()
	}
	return s.Kind + ":" + s.Path
}

// Parse parses an image reference (see IsReference).
func Parse(s string) (Source, error) {
	hint := "references look like registry.example.com/team/image:tag, localhost:5000/img@sha256:..., oci-archive:PATH or docker-archive:PATH"
	for _, k := range []struct{ prefix, kind string }{{OCIArchivePrefix, KindOCIArchive}, {DockerArchivePrefix, KindDockerArchive}} {
		if p, ok := strings.CutPrefix(s, k.prefix); ok {
			if p == "" || strings.IndexByte(p, 0) >= 0 {
				return Source{}, errdefs.New(errdefs.ErrInvalidArgument, hint, "invalid image reference %q: no archive path", s)
			}
			return Source{Kind: k.kind, Path: p}, nil
		}
	}
	if !IsReference(s) {
		return Source{}, errdefs.New(errdefs.ErrInvalidArgument, hint, "%q is a catalog name, not an image reference", s)
	}
	ref, err := name.ParseReference(s, name.StrictValidation)
	if err != nil {
		// StrictValidation refuses an implied tag; allow it, "latest".
		ref, err = name.ParseReference(s)
	}
	if err != nil {
		return Source{}, errdefs.Wrap(errdefs.ErrInvalidArgument, err, hint, "invalid image reference %q", s)
	}
	// The library's lenient parse takes "../../etc" as a repository; the
	// distribution spec's path components never contain dots alone.
	for _, c := range strings.Split(ref.Context().RepositoryStr(), "/") {
		if !pathComponentRE.MatchString(c) {
			return Source{}, errdefs.New(errdefs.ErrInvalidArgument, hint, "invalid image reference %q: bad repository component %q", s, c)
		}
	}
	return Source{Kind: KindRegistry, Ref: ref}, nil
}

// Digest returns the digest a registry reference pins ("sha256:..."), or "".
func (s Source) Digest() string {
	if d, ok := s.Ref.(name.Digest); ok {
		return d.DigestStr()
	}
	return ""
}

// pathComponentRE is a repository path component of the OCI distribution
// spec.
var pathComponentRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$`)

func describe(s Source) string { return fmt.Sprintf("%q", s.String()) }
