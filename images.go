package pyro

import "github.com/pyro-mcp/pyro/internal/envstore"

// EnvironmentImage describes the OCI image an environment was converted
// from, and the config its commands run with.
type EnvironmentImage struct {
	Reference  string   `json:"reference"`
	Digest     string   `json:"digest"` // image manifest digest
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Layers     int      `json:"layers"`
	Skipped    int      `json:"skipped_entries"`
}

func imageFrom(i *envstore.ImageInfo) *EnvironmentImage {
	if i == nil {
		return nil
	}
	return &EnvironmentImage{Reference: i.Reference, Digest: i.Digest, Env: i.Env, WorkingDir: i.WorkingDir,
		User: i.User, Layers: i.Layers, Skipped: i.Skipped}
}
