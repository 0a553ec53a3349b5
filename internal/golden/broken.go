package golden

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode"
)

// Broken restores: a snapshot whose restored guests load and answer, then
// die before anyone used them (a pool's priming, its pause), fails every
// later restore the same way, and a pool would keep restoring it. Each
// such guest adds a line to BrokenFile in the snapshot's directory; after
// MaxBrokenRestores of them the snapshot is discarded (and its key marked
// failed: starts boot cold until a rebuild may be tried, failedFor). One
// death may be the host's doing (a QEMU killed for memory), so it takes a
// few.

// BrokenFile lists, a line each, why guests restored from the snapshot
// died unused.
const BrokenFile = "broken"

// MaxBrokenRestores is how many restored guests of one snapshot may die
// unused before the snapshot is discarded.
const MaxBrokenRestores = 3

// maxBrokenLine bounds one line of BrokenFile (a reason quotes the
// guest's console).
const maxBrokenLine = 512

// brokenFileMax bounds the read of BrokenFile.
const brokenFileMax = 64 << 10

// RecordBroken notes that a guest restored from the snapshot in dir died
// unused, and why. When that made MaxBrokenRestores, it discards the
// snapshot, marks its key failed and returns discarded true.
func (s *Store) RecordBroken(dir, why string) (discarded bool, err error) {
	if filepath.Dir(dir) != filepath.Clean(s.dir) {
		return false, fmt.Errorf("%s is not a snapshot of %s", dir, s.dir)
	}
	m, err := Verify(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil // discarded already
		}
		return false, err
	}
	// why quotes the guest's console: one line of printable characters
	// (it is shown to people later: RecentlyFailed).
	line := strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, strings.Join(strings.Fields(why), " "))
	if len(line) > maxBrokenLine {
		line = strings.ToValidUTF8(line[:maxBrokenLine], "")
	}
	f, err := os.OpenFile(filepath.Join(dir, BrokenFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil // discarded meanwhile
		}
		return false, err
	}
	// One write of a short line with O_APPEND: lines of concurrent
	// writers do not interleave.
	_, err = f.Write([]byte(line + "\n"))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, err
	}
	// A file past its bound holds more than enough lines.
	b, err := readCapped(filepath.Join(dir, BrokenFile), brokenFileMax)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // discarded meanwhile
	}
	if err == nil && bytes.Count(b, []byte("\n")) < MaxBrokenRestores {
		return false, nil
	}
	if err := s.Discard(dir); err != nil {
		return false, err
	}
	s.MarkFailed(m.Key, fmt.Sprintf("%d guests restored from it died unused; the last: %s", MaxBrokenRestores, line))
	return true, nil
}
