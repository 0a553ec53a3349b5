package pyro

import (
	"context"
	"time"

	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/netstack"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vm"
)

// NetworkInfo describes a VM's network.
type NetworkInfo struct {
	VMID    string `json:"vm_id"`
	Enabled bool   `json:"network_enabled"`
	// Mode is "netstack" (pyro's userspace network stack, which decides
	// every connection and lookup by the policy) or "none" (no NIC).
	Mode string `json:"mode"`
	// NetworkPolicy and AllowHosts are the policy in force: the running
	// guest's (a live change shows at once), else the recorded one.
	NetworkPolicy string   `json:"network_policy"`
	AllowHosts    []string `json:"allow_hosts,omitempty"`
	GuestIP       string   `json:"guest_ip,omitempty"`
	Prefix        int      `json:"prefix_length,omitempty"`
	Gateway       string   `json:"gateway,omitempty"`
	DNS           string   `json:"dns,omitempty"`
	MAC           string   `json:"mac,omitempty"`
	Interface     string   `json:"interface,omitempty"`
	// PublishedPorts are the host loopback ports forwarded into the guest.
	PublishedPorts []PublishedPort `json:"published_ports,omitempty"`
}

// PublishedPort is a port on the host's loopback forwarded to a guest port.
type PublishedPort struct {
	HostAddress string `json:"host_address"` // always 127.0.0.1
	HostPort    int    `json:"host_port"`
	GuestPort   int    `json:"guest_port"`
}

// NetworkInfoVM describes a VM's network: off (no NIC at all) or the
// addresses of pyro's userspace network, its policy and published ports.
func (c *Client) NetworkInfoVM(ctx context.Context, id string) (NetworkInfo, error) {
	dir, rec, err := c.vmDir(id)
	if err != nil {
		return NetworkInfo{}, err
	}
	n := networkInfo(rec)
	if n.Enabled {
		// A running guest's stack says what is in force now.
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := supervisor.NewClient(dir).NetworkState(sctx)
		cancel()
		if err == nil {
			p := st.Policy.Normalized()
			n.NetworkPolicy, n.AllowHosts = string(p.Mode), p.AllowHosts
			for _, pp := range st.Published {
				n.PublishedPorts = append(n.PublishedPorts, PublishedPort(pp))
			}
			n.GuestIP, n.Prefix, n.Gateway, n.DNS = st.GuestIP, st.Prefix, st.Gateway, st.DNS
		}
	}
	return n, nil
}

func networkInfo(rec instance.Record) NetworkInfo {
	p := rec.Policy().Normalized()
	if !p.Mode.Networked() {
		return NetworkInfo{VMID: rec.ID, Mode: "none", NetworkPolicy: string(p.Mode)}
	}
	return NetworkInfo{VMID: rec.ID, Enabled: true, Mode: "netstack", NetworkPolicy: string(p.Mode), AllowHosts: p.AllowHosts,
		GuestIP: netstack.GuestIP.String(), Prefix: netstack.Subnet.Bits(), Gateway: netstack.Gateway.String(),
		DNS: netstack.DNS.String(), MAC: vm.MAC(rec.ID), Interface: "eth0"}
}
