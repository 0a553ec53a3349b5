package tarutil

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Reader reads a tar stream from an untrusted party entry by entry, as
// tar.Reader does, with what the host needs to stay bounded: Next refuses
// sparse entries (a few archive bytes that would expand to gigabytes) and
// entries larger than a limit, and reading an entry fails as soon as it
// yields more data than the archive carries for it.
type Reader struct {
	in    *countingReader
	tr    *tar.Reader
	max   int64
	guard *sparseGuard
}

// NewReader reads the uncompressed tar stream r; entries over maxEntry
// bytes are refused (no limit when maxEntry <= 0).
func NewReader(r io.Reader, maxEntry int64) *Reader {
	in := &countingReader{r: r}
	return &Reader{in: in, tr: tar.NewReader(in), max: maxEntry}
}

// Next advances to the next entry. Errors for refused or malformed entries
// wrap ErrBadArchive; the end of the archive is io.EOF.
func (r *Reader) Next() (*tar.Header, error) {
	hdr, err := r.tr.Next()
	if errors.Is(err, io.EOF) {
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadArchive, err)
	}
	if hdr.Typeflag == tar.TypeGNUSparse || isPAXSparse(hdr) {
		return nil, fmt.Errorf("%w: %q is a sparse entry (not supported)", ErrBadArchive, hdr.Name)
	}
	if hdr.Size < 0 || (r.max > 0 && hdr.Size > r.max) {
		return nil, fmt.Errorf("%w: %q claims %d bytes, over the limit of %d", ErrBadArchive, hdr.Name, hdr.Size, r.max)
	}
	r.guard = &sparseGuard{tr: r.tr, in: r.in, start: r.in.n}
	return hdr, nil
}

// Read reads the current entry's data.
func (r *Reader) Read(p []byte) (int, error) {
	if r.guard == nil {
		return 0, io.EOF
	}
	n, err := r.guard.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, ErrBadArchive) {
		err = fmt.Errorf("%w: %w", ErrBadArchive, err)
	}
	return n, err
}

func isPAXSparse(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
