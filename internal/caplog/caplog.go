// Package caplog writes a log file that never grows past a cap: when the
// next write would pass it, the file becomes NAME.1 (replacing the previous
// one) and a new NAME starts. A log fed by an untrusted guest (its serial
// console) therefore takes at most twice the cap on the host disk, and the
// newest output, which explains a failure, is always kept.
package caplog

import (
	"os"
	"sync"
)

// Writer is a capped, rotated log file. Safe for concurrent use.
type Writer struct {
	mu   sync.Mutex
	path string
	max  int64
	f    *os.File
	size int64
	err  error
}

// Open opens (appending to) the log at path with a cap of max bytes per
// generation; max <= 0 means no cap.
func Open(path string, max int64) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Writer{path: path, max: max, f: f, size: st.Size()}, nil
}

// Write appends p, rotating first when it would pass the cap. A single
// write larger than the cap keeps only its last max bytes. It always
// reports len(p) written (unless the file fails), so a producer is never
// stalled or failed by the cap.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	n := len(p)
	if w.max > 0 {
		if int64(len(p)) > w.max {
			p = p[int64(len(p))-w.max:]
		}
		if w.size+int64(len(p)) > w.max {
			if err := w.rotate(); err != nil {
				w.err = err
				return 0, err
			}
		}
	}
	m, err := w.f.Write(p)
	w.size += int64(m)
	if err != nil {
		w.err = err
		return 0, err
	}
	return n, nil
}

func (w *Writer) rotate() error {
	if err := os.Rename(w.path, w.path+".1"); err != nil {
		return err
	}
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	w.f.Close()
	w.f, w.size = f, 0
	return nil
}

// Close closes the current file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.f.Close()
}
