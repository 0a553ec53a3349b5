package pyro

import (
	"encoding/json"
	"errors"
	"os"
	"unicode/utf8"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
	"github.com/pyro-mcp/pyro/internal/names"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Secret is a guest-only value given at workspace creation: either Value
// (source "literal") or the content of the host file FilePath (source
// "file"). Values never appear in records, results, logs or snapshots.
type Secret struct {
	Name     string
	Value    string
	FilePath string
}

// SecretInfo is the safe metadata of a secret: its name and source kind.
type SecretInfo struct {
	Name   string `json:"name"`
	Source string `json:"source"` // "literal" or "file"
}

// checkSecrets validates secrets and reads file sources. It returns the
// safe metadata and the values by name.
func checkSecrets(secrets []Secret) ([]SecretInfo, map[string]string, error) {
	info := []SecretInfo{}
	values := map[string]string{}
	for _, s := range secrets {
		if !names.IsEnvName(s.Name) {
			return nil, nil, errdefs.New(errdefs.ErrInvalidArgument, "use an environment-variable-safe name: letters, digits, '_', not starting with a digit", "invalid secret name %q", s.Name)
		}
		if _, dup := values[s.Name]; dup {
			return nil, nil, errdefs.New(errdefs.ErrInvalidArgument, "give each secret once", "duplicate secret %q", s.Name)
		}
		src, v := "literal", s.Value
		if s.FilePath != "" {
			if s.Value != "" {
				return nil, nil, errdefs.New(errdefs.ErrInvalidArgument, "give a value or a file, not both", "secret %q has both", s.Name)
			}
			b, err := os.ReadFile(s.FilePath)
			if err != nil {
				return nil, nil, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "check the path", "secret %q: cannot read %q", s.Name, s.FilePath)
			}
			src, v = "file", string(b)
		}
		if !utf8.ValidString(v) {
			return nil, nil, errdefs.New(errdefs.ErrInvalidArgument, "secrets must be UTF-8 text", "secret %q is not valid UTF-8", s.Name)
		}
		if v == "" {
			return nil, nil, errdefs.New(errdefs.ErrInvalidArgument, "give a non-empty value", "secret %q is empty", s.Name)
		}
		values[s.Name] = v
		info = append(info, SecretInfo{Name: s.Name, Source: src})
	}
	return info, values, nil
}

// saveSecrets keeps the values host-side in one 0600 file per workspace,
// apart from the record, so that reset can materialise them again.
func saveSecrets(dir vmdir.Dir, values map[string]string) error {
	if len(values) == 0 {
		return nil
	}
	b, err := json.Marshal(values)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(dir.Path(workspace.SecretsFile), b, 0o600)
}

// loadSecrets reads a workspace's secret values (none: empty map).
func loadSecrets(dir vmdir.Dir) (map[string]string, error) {
	values := map[string]string{}
	b, err := os.ReadFile(dir.Path(workspace.SecretsFile))
	if errors.Is(err, os.ErrNotExist) {
		return values, nil
	}
	if err != nil {
		return nil, err
	}
	return values, json.Unmarshal(b, &values)
}
