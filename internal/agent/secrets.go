package agent

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/names"
	"github.com/pyro-mcp/pyro/internal/redact"
)

// Secrets are guest-only values the host sets with /v1/secrets after each
// boot. The agent keeps them in memory (to resolve secret_env mappings and
// to redact them from everything it returns) and materialises them as
// 0400 files on a tmpfs. Values are never logged and never put in errors.

// secretStore is an agent's secret set. It outlives host connections, like
// services and shells.
type secretStore struct {
	mu     sync.RWMutex
	values map[string]string
	red    *redact.Redactor
	gen    uint64 // bumped on every change
}

// redactor returns the current redactor (nil: nothing to redact) and the
// set's generation.
func (st *secretStore) redactor() (*redact.Redactor, uint64) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.red, st.gen
}

// set replaces the in-memory set.
func (st *secretStore) set(values map[string]string) {
	vals := make([]string, 0, len(values))
	cp := make(map[string]string, len(values))
	for k, v := range values {
		cp[k] = v
		vals = append(vals, v)
	}
	red := redact.New(vals)
	st.mu.Lock()
	defer st.mu.Unlock()
	st.values, st.red = cp, red
	st.gen++
}

// resolve turns a secret_env mapping (secret name -> variable name, ""
// meaning the secret's own name) into variables. An unknown secret is
// not_found, naming the secret only.
func (st *secretStore) resolve(mapping map[string]string) (map[string]string, error) {
	if len(mapping) == 0 {
		return nil, nil
	}
	st.mu.RLock()
	defer st.mu.RUnlock()
	names := make([]string, 0, len(mapping))
	for name := range mapping {
		names = append(names, name)
	}
	sort.Strings(names)
	env := make(map[string]string, len(mapping))
	for _, name := range names {
		v, ok := st.values[name]
		if !ok {
			return nil, errorf(errdefs.ErrNotFound, "unknown secret %q (hint: secrets are set when the workspace is created)", name)
		}
		vr := mapping[name]
		if vr == "" {
			vr = name
		}
		if strings.ContainsAny(vr, "=\x00") {
			return nil, errorf(errdefs.ErrInvalidArgument, "invalid environment variable name %q for secret %q", vr, name)
		}
		env[vr] = v
	}
	return env, nil
}

// withEnv returns env with the resolved secret variables added (they win
// over env).
func (st *secretStore) withEnv(env, mapping map[string]string) (map[string]string, error) {
	sec, err := st.resolve(mapping)
	if err != nil || len(sec) == 0 {
		return env, err
	}
	out := make(map[string]string, len(env)+len(sec))
	for k, v := range env {
		out[k] = v
	}
	for k, v := range sec {
		out[k] = v
	}
	return out, nil
}

// redactString redacts s with the current secret set.
func (st *secretStore) redactString(s string) string {
	red, _ := st.redactor()
	return red.String(s)
}

func (s *Agent) handleSetSecrets(w http.ResponseWriter, r *http.Request) {
	var req agentapi.SecretsRequest
	if err := decodeBody(r, &req); err != nil {
		// A decode error may quote the body: never echo it.
		s.fail(w, errorf(errdefs.ErrInvalidArgument, "decode secrets request: malformed JSON"))
		return
	}
	set := make([]string, 0, len(req.Secrets))
	for name, v := range req.Secrets {
		if !names.IsEnvName(name) {
			s.fail(w, errorf(errdefs.ErrInvalidArgument, "invalid secret name %q: use letters, digits and '_', not starting with a digit", name))
			return
		}
		if v == "" || strings.IndexByte(v, 0) >= 0 {
			s.fail(w, errorf(errdefs.ErrInvalidArgument, "secret %q: the value must be non-empty and contain no NUL byte", name))
			return
		}
		set = append(set, name)
	}
	sort.Strings(set)
	// Redact first: from now on nothing returns the values.
	s.secrets.set(req.Secrets)
	dir := s.opts.SecretsDir
	if err := materializeSecrets(dir, req.Secrets, dir == agentapi.SecretsDir); err != nil {
		s.fail(w, errorf(errdefs.ErrUnavailable, "materialise secrets under %s: %v", dir, err))
		return
	}
	s.log.Info("secrets set", "count", len(set), "dir", dir)
	writeJSON(w, http.StatusOK, agentapi.SecretsResponse{Names: set, Dir: dir})
}

// materializeSecrets makes dir hold exactly one 0400 file per secret. With
// mount, dir is a tmpfs of its own (mode 0700); when mounting is not
// allowed (host-compat), dir must be on a tmpfs already.
func materializeSecrets(dir string, values map[string]string, mount bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	if mount && !isMountPoint(dir) {
		err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=16m")
		if err != nil {
			var fs unix.Statfs_t
			if unix.Statfs(dir, &fs) != nil || fs.Type != unix.TMPFS_MAGIC {
				return fmt.Errorf("mount tmpfs: %w", err)
			}
			// Already on a tmpfs (e.g. /run): good enough.
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if _, keep := values[e.Name()]; !keep {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	for name, v := range values {
		if err := writeSecretFile(dir, name, v); err != nil {
			return err
		}
	}
	return nil
}

func writeSecretFile(dir, name, value string) error {
	tmp := filepath.Join(dir, "."+name+".tmp")
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o400)
	if err != nil {
		return err
	}
	_, err = io.WriteString(f, value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o400)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write secret %q: %w", name, err)
	}
	return nil
}

// isMountPoint reports whether path is the root of a mount (its device
// differs from its parent's).
func isMountPoint(path string) bool {
	var st, pst unix.Stat_t
	if unix.Stat(path, &st) != nil || unix.Stat(filepath.Dir(path), &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev
}

// liveRedactor redacts a byte stream written into w with the current
// secrets of st; a secret split across writes is still caught. When the
// set changes, the held-back tail is flushed and a new stream starts. Not
// safe for concurrent use (one copying goroutine).
type liveRedactor struct {
	st  *secretStore
	w   io.Writer
	gen uint64
	s   *redact.Stream
}

func (l *liveRedactor) Write(p []byte) (int, error) {
	red, gen := l.st.redactor()
	if l.s == nil || gen != l.gen {
		l.Flush()
		l.s, l.gen = red.Stream(), gen
	}
	if out := l.s.Write(p); len(out) > 0 {
		if _, err := l.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes the held-back tail.
func (l *liveRedactor) Flush() {
	if l.s == nil {
		return
	}
	if out := l.s.Flush(); len(out) > 0 {
		_, _ = l.w.Write(out)
	}
}

// RestoreSecrets reloads the secret set from the files in the secrets
// directory, so an agent process that PID 1 restarted keeps resolving and
// redacting the secrets the host set before. Missing or unreadable files
// are skipped. It returns how many secrets it loaded.
func (s *Agent) RestoreSecrets() int {
	dir := s.opts.SecretsDir
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	values := map[string]string{}
	for _, e := range ents {
		if !e.Type().IsRegular() || !names.IsEnvName(e.Name()) {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil && len(b) > 0 {
			values[e.Name()] = string(b)
		}
	}
	if len(values) > 0 {
		s.secrets.set(values)
	}
	return len(values)
}
