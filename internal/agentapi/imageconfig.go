package agentapi

// ImageConfigPath is where an environment converted from an OCI image
// carries the image's config into the guest. The host writes it into the
// root filesystem at conversion; the agent reads it at start and applies it
// to every command, service and shell it starts. Catalog environments have
// none.
const ImageConfigPath = "/etc/pyro/image-config.json"

// ImageConfig is the part of an OCI image config that shapes commands.
type ImageConfig struct {
	Reference  string   `json:"reference"`             // as pulled, for people
	Digest     string   `json:"digest"`                // manifest digest
	Env        []string `json:"env,omitempty"`         // KEY=VALUE, over the agent's defaults
	WorkingDir string   `json:"working_dir,omitempty"` // default cwd of exec (workspaces keep /workspace)
	User       string   `json:"user,omitempty"`        // "name", "uid", "name:group" or "uid:gid"
}
