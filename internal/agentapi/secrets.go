package agentapi

import (
	"context"
	"net/http"
)

// PathSecrets sets the guest's secrets (POST SecretsRequest ->
// SecretsResponse).
const PathSecrets = "/v1/secrets"

// SecretsDir is where the guest agent materialises secrets: a tmpfs, one
// file per secret (mode 0400), never under /workspace.
const SecretsDir = "/run/pyro-secrets"

// SecretsRequest replaces the guest's whole secret set (idempotent). The
// agent writes each value to SecretsDir/NAME, keeps the values in memory to
// resolve secret_env mappings, and from then on replaces every value (and
// its base64, hex, URL and JSON encoded forms) with "[REDACTED]" in exec
// output, service logs, shell output and error messages. Names are
// environment-variable-safe identifiers; values are non-empty and contain
// no NUL byte. An empty set removes every secret.
type SecretsRequest struct {
	Secrets map[string]string `json:"secrets"`
}

// SecretsResponse lists the names now set (sorted) and where their files
// are. It never carries a value.
type SecretsResponse struct {
	Names []string `json:"names"`
	Dir   string   `json:"dir"`
}

// SetSecrets replaces the guest's secrets. Secret values travel only in
// this request's body; requests that use them (secret_env) carry names.
func (c *Client) SetSecrets(ctx context.Context, secrets map[string]string) (SecretsResponse, error) {
	if secrets == nil {
		secrets = map[string]string{}
	}
	var r SecretsResponse
	err := c.jsonCall(ctx, callTimeout, http.MethodPost, PathSecrets, SecretsRequest{Secrets: secrets}, &r)
	return r, err
}
