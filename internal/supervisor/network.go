package supervisor

// The guest network's part of the supervisor API (the stack is the VM's,
// vm.VM.Net; it lives and dies with the supervisor, and so do the
// published ports' listeners):
//
//	GET    /v1/network                    -> NetworkState (policy, addresses, published ports)
//	GET    /v1/network/denials            -> []netpolicy.Denial, drained: each denial is reported once
//	PUT    /v1/network/policy             <- netpolicy.Policy; applies at once (no restart)
//	POST   /v1/network/publish            <- PublishRequest -> PublishedPort
//	DELETE /v1/network/publish/{guest_port}
//
// A guest without a network answers every one with failed_precondition.
// Publishing needs the egress+published-ports policy, listens on 127.0.0.1
// only, and a host port already bound is failed_precondition.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/netstack"
)

// PublishedPort is a host loopback port forwarded to a guest port.
type PublishedPort = netstack.PublishedPort

// PublishRequest is the body of POST /v1/network/publish. HostPort 0 picks
// a free port.
type PublishRequest struct {
	HostPort  int `json:"host_port"`
	GuestPort int `json:"guest_port"`
}

// NetworkState is what GET /v1/network answers: the addresses the guest
// sees and the policy in force.
type NetworkState struct {
	Policy    netpolicy.Policy `json:"policy"`
	GuestIP   string           `json:"guest_ip"`
	Prefix    int              `json:"prefix"`
	Gateway   string           `json:"gateway"`
	DNS       string           `json:"dns"`
	Published []PublishedPort  `json:"published_ports"`
}

// maxPolicyBody bounds a policy request (256 entries of 300 characters fit).
const maxPolicyBody = 128 << 10

// net returns the running guest's network stack, or why there is none.
func (s *server) net() (*netstack.Stack, error) {
	s.mu.Lock()
	v, state := s.vm, s.status.State
	s.mu.Unlock()
	if v == nil || state != instance.Running {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "wait until it is running", "vm is %s", state)
	}
	if v.Net == nil {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "create it with a network policy (--network-policy egress)", "the guest has no network")
	}
	return v.Net, nil
}

func (s *server) networkRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/network", func(w http.ResponseWriter, _ *http.Request) {
		st, err := s.net()
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, NetworkState{Policy: st.Policy(), GuestIP: netstack.GuestIP.String(),
			Prefix: netstack.Subnet.Bits(), Gateway: netstack.Gateway.String(), DNS: netstack.DNS.String(), Published: st.Published()})
	})
	mux.HandleFunc("GET /v1/network/denials", func(w http.ResponseWriter, _ *http.Request) {
		st, err := s.net()
		if err != nil {
			writeError(w, err)
			return
		}
		ds := st.Denials()
		if ds == nil {
			ds = []netpolicy.Denial{}
		}
		writeJSON(w, http.StatusOK, ds)
	})
	mux.HandleFunc("PUT /v1/network/policy", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.net()
		if err != nil {
			writeError(w, err)
			return
		}
		var p netpolicy.Policy
		if err := decodeBody(r, maxPolicyBody, &p); err != nil {
			writeError(w, err)
			return
		}
		if err := st.SetPolicy(p); err != nil {
			writeError(w, err)
			return
		}
		s.log.Info("network policy changed", "policy", st.Policy().String())
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/network/publish", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.net()
		if err != nil {
			writeError(w, err)
			return
		}
		var req PublishRequest
		if err := decodeBody(r, 4096, &req); err != nil {
			writeError(w, err)
			return
		}
		if p := st.Policy(); !p.Mode.Publishes() {
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition,
				"create it with --network-policy "+string(netpolicy.EgressPublished)+" (network_policy)",
				"publishing a port needs the %s policy, not %s", netpolicy.EgressPublished, p.Normalized().Mode))
			return
		}
		pp, err := st.Publish(req.HostPort, req.GuestPort)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, pp)
	})
	mux.HandleFunc("DELETE /v1/network/publish/{guest_port}", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.net()
		if err != nil {
			writeError(w, err)
			return
		}
		port, perr := strconv.Atoi(r.PathValue("guest_port"))
		if perr != nil {
			writeError(w, errdefs.New(errdefs.ErrInvalidArgument, "", "guest port %q is not a number", r.PathValue("guest_port")))
			return
		}
		if err := st.Unpublish(port); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

func decodeBody(r *http.Request, limit int64, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "bad request body")
	}
	return nil
}

// NetworkState returns the guest network's addresses, policy and published
// ports.
func (c *Client) NetworkState(ctx context.Context) (NetworkState, error) {
	var st NetworkState
	return st, c.call(ctx, http.MethodGet, "/v1/network", nil, &st)
}

// NetworkDenials drains the lookups and connections the guest network
// refused since the last call.
func (c *Client) NetworkDenials(ctx context.Context) ([]netpolicy.Denial, error) {
	var ds []netpolicy.Denial
	return ds, c.call(ctx, http.MethodGet, "/v1/network/denials", nil, &ds)
}

// SetNetworkPolicy changes the running guest's policy at once. It does not
// touch the record: the caller persists what it applied.
func (c *Client) SetNetworkPolicy(ctx context.Context, p netpolicy.Policy) error {
	return c.call(ctx, http.MethodPut, "/v1/network/policy", p, nil)
}

// Publish forwards 127.0.0.1:hostPort (0: a free port) to guestPort.
func (c *Client) Publish(ctx context.Context, hostPort, guestPort int) (PublishedPort, error) {
	var pp PublishedPort
	return pp, c.call(ctx, http.MethodPost, "/v1/network/publish", PublishRequest{HostPort: hostPort, GuestPort: guestPort}, &pp)
}

// Unpublish closes the published guest port and its connections.
func (c *Client) Unpublish(ctx context.Context, guestPort int) error {
	return c.call(ctx, http.MethodDelete, "/v1/network/publish/"+strconv.Itoa(guestPort), nil, nil)
}

// maxReply bounds a supervisor reply read by call.
const maxReply = 1 << 20

// call sends a JSON request and decodes a JSON reply (out nil: none); a
// non-2xx reply becomes its errdefs category.
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://pyro-supervisor"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "check that it is running (`pyro vm status`)", "supervisor %s %s", method, path)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return fmt.Errorf("supervisor %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var er agentapi.ErrorResponse
		if json.Unmarshal(data, &er) != nil || er.Error == "" {
			er = agentapi.ErrorResponse{Error: fmt.Sprintf("supervisor %s %s: http %d", method, path, resp.StatusCode)}
		}
		return er.Err(resp.StatusCode)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("supervisor %s %s: %w", method, path, err)
	}
	return nil
}
