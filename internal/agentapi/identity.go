package agentapi

import (
	"context"
	"net/http"
	"time"
)

// PathIdentity makes a guest restored from a memory snapshot a machine of
// its own (POST IdentityRequest -> IdentityResponse). The host calls it
// once, right after the restore and before anything else runs in the
// guest: every clone of one snapshot starts with the same kernel RNG
// state, clock, hostname, machine-id and MAC, and a workspace disk the
// snapshot's guest never mounted.
//
// The agent applies, in this order: Entropy into the kernel RNG (credited
// with RNDADDENTROPY, then RNDRESEEDCRNG so the very next read of
// /dev/urandom comes from the new state), the clock, the hostname (and
// /etc/hosts), /etc/machine-id, the NIC's MAC, and then mounts the
// workspace disk when asked. Not idempotent for the workspace mount: a
// second call with MountWorkspace fails with failed_precondition.
const PathIdentity = "/v1/identity"

// IdentityEntropyBytes is how many bytes of host entropy an identity
// request carries (and the most the agent accepts).
const IdentityEntropyBytes = 64

// IdentityRequest is a restored guest's new identity.
type IdentityRequest struct {
	// Entropy is host randomness for the kernel RNG (IdentityEntropyBytes).
	Entropy []byte `json:"entropy"`
	// UnixNano is the host's wall clock when the request was made.
	UnixNano int64 `json:"unix_nano"`
	// Hostname is the new hostname (a DNS label).
	Hostname string `json:"hostname"`
	// MachineID is 32 lowercase hex digits for /etc/machine-id.
	MachineID string `json:"machine_id"`
	// MAC is the NIC's new address ("52:54:00:xx:xx:xx"); empty when the
	// guest has no NIC.
	MAC string `json:"mac,omitempty"`
	// MountWorkspace asks the agent to mount the workspace disk at
	// /workspace, after dropping every cached block of it.
	MountWorkspace bool `json:"mount_workspace,omitempty"`
	// WorkspaceBytes is the workspace disk's size on the host; the agent
	// waits (bounded) until the guest kernel sees that size before mounting.
	WorkspaceBytes int64 `json:"workspace_bytes,omitempty"`
	// WorkspaceLayered: /workspace is the overlay of the workspace disk
	// on its baseline disk (both mounted fresh).
	WorkspaceLayered bool `json:"workspace_layered,omitempty"`
	// Inherited asks for what the guest still runs (IdentityResponse.
	// Inherited): a fork's host learns it in this one call
	// (identity_fork.go).
	Inherited bool `json:"inherited,omitempty"`
	// Timings asks for IdentityResponse.Timings.
	Timings bool `json:"timings,omitempty"`
}

// IdentityResponse says what the agent did.
type IdentityResponse struct {
	Hostname  string `json:"hostname"`
	MachineID string `json:"machine_id"`
	MAC       string `json:"mac,omitempty"`
	Workspace bool   `json:"workspace_mounted"`
	// Health is the agent's health after the refresh: the call doubles
	// as the restored guest's readiness check.
	Health Health `json:"health"`
	// Inherited is what the guest runs, when the request asked for it
	// (nil from an agent that does not know the field).
	Inherited *Inherited `json:"inherited,omitempty"`
	// Timings, when the request asked, are the agent's phases of the
	// call on the guest's clock (as ExecResult.Timings).
	Timings string `json:"timings,omitempty"`
}

// SetIdentity sends a restored guest its new identity: one attempt,
// bounded by ctx and CallTimeout.
func (c *Client) SetIdentity(ctx context.Context, req IdentityRequest) (IdentityResponse, error) {
	return c.SetIdentityWithin(ctx, callTimeout, req)
}

// SetIdentityWithin is SetIdentity bounded by d instead of CallTimeout,
// for a caller that waits for a restored guest's first answer as long as
// it would wait for a booted one's: that answer comes as fast as the host
// lets the guest run, and on a loaded TCG host that is slow, not dead.
func (c *Client) SetIdentityWithin(ctx context.Context, d time.Duration, req IdentityRequest) (IdentityResponse, error) {
	var r IdentityResponse
	err := c.jsonCall(ctx, d, http.MethodPost, PathIdentity, req, &r)
	if r.Inherited != nil && len(r.Inherited.Jobs) > MaxJobs {
		r.Inherited.Jobs = r.Inherited.Jobs[:MaxJobs] // as ListJobs
	}
	return r, err
}
