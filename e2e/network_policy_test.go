package e2e

// Network policy surface (#13) through the real binary. Every test here
// keeps its traffic on this machine: refused names never leave the
// supervisor's stack, refused addresses are refused before any host socket,
// and the only resolver the stack may ask (PYRO_DNS_UPSTREAM) is a DNS
// server this test runs on the host's loopback.

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/netstack/dnstest"
)

// localDNS starts the test's resolver and returns the env that makes the
// network stack use it.
func localDNS(t *testing.T) (*dnstest.Server, []string) {
	t.Helper()
	dns, err := dnstest.Start(map[string]netip.Addr{"svc.test": netip.MustParseAddr("192.0.2.10")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Close() })
	return dns, []string{"PYRO_DNS_UPSTREAM=" + dns.Addr()}
}

// denial is network_test.go's.

func denialsOf(t *testing.T, v any) []denial {
	t.Helper()
	b, _ := json.Marshal(v)
	var ds []denial
	if err := json.Unmarshal(b, &ds); err != nil {
		t.Fatalf("network_denials %s: %v", b, err)
	}
	return ds
}

func hasDenialAt(ds []denial, host, addr string) bool {
	return slices.ContainsFunc(ds, func(d denial) bool { return d.Host == host && d.Address == addr && d.Reason != "" })
}

// Bad policies are refused with invalid_argument before anything exists.
func TestNetworkPolicyBadInput(t *testing.T) {
	requireE2E(t)
	home, env := isolatedHome(t)
	for _, args := range [][]string{
		{"run", "--json", "--network", "--network-policy", "off", baseEnv, "--", "true"},
		{"run", "--json", "--network-policy", "wide-open", baseEnv, "--", "true"},
		{"run", "--json", "--allow-host", "pypi.org", baseEnv, "--", "true"}, // an allowlist needs a networked policy
		{"vm", "create", "--json", "--network-policy", "egress", "--allow-host", "*.com", baseEnv},
		{"vm", "create", "--json", "--network-policy", "egress", "--allow-host", "pypi.org:70000", baseEnv},
		{"workspace", "create", "--json", "--network-policy", "egress", "--allow-host", "10.0.0.1/8", baseEnv},
		{"workspace", "create", "--json", "--network-policy", "egress", "--allow-host", "@nope", baseEnv},
	} {
		r := pyro(t, env, args...)
		if r.code != 2 || !strings.Contains(r.stdout, `"invalid_argument"`) || !strings.Contains(r.stderr, "hint:") {
			t.Errorf("pyro %v: exit %d, want 2 with invalid_argument and a hint\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
		}
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Errorf("refused requests left %v", left)
	}
}

// off has no NIC; egress with an allowlist has one, and the run's result
// names the policy and lists what it refused: a lookup of a refused name
// (never sent to the resolver) and a private address (never dialled).
func TestNetworkPolicyRun(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	dns, env := localDNS(t)

	m, r := runJSON(t, env, "--network-policy", "off", baseEnv, "--", "ls /sys/class/net")
	if r.code != 0 || strings.TrimSpace(m["stdout"].(string)) != "lo" || m["network_policy"] != "off" {
		t.Fatalf("off: exit %d, stdout %q, policy %v\n%s", r.code, m["stdout"], m["network_policy"], r.stderr)
	}

	m, r = runJSON(t, env, "--network-policy", "egress", "--allow-host", "nothing.invalid", baseEnv, "--",
		"ls /sys/class/net; getent hosts refused.example.org; echo getent=$?; bash -c 'exec 3<>/dev/tcp/10.255.255.1/80' 2>/dev/null; echo tcp=$?")
	out, _ := m["stdout"].(string)
	if r.code != 0 || !strings.Contains(out, "eth0") || !strings.Contains(out, "getent=2") || strings.Contains(out, "tcp=0") {
		t.Fatalf("egress: exit %d, stdout %q\n%s", r.code, out, r.stderr)
	}
	if m["network_policy"] != "egress" || !slices.Equal(strSlice(m["allow_hosts"]), []string{"nothing.invalid"}) {
		t.Errorf("policy in the result: %v %v", m["network_policy"], m["allow_hosts"])
	}
	ds := denialsOf(t, m["network_denials"])
	if !hasDenialAt(ds, "refused.example.org", "") || !hasDenialAt(ds, "", "10.255.255.1") {
		t.Errorf("network_denials = %+v", ds)
	}
	if seen := dns.Seen(); len(seen) != 0 {
		t.Errorf("refused names reached the resolver: %q", seen)
	}
}

func strSlice(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// A workspace's allowlist changes live: a name refused at first resolves
// after `workspace network set`, without a restart; denials are in the exec
// result and stay in `workspace logs`; switching to off is refused.
func TestNetworkPolicyWorkspaceLive(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	dns, dnsEnv := localDNS(t)
	_, env := isolatedHome(t)
	env = append(env, dnsEnv...)
	var w map[string]any
	mustWS(t, env, &w, "create", "--network-policy", "egress", "--allow-host", "nothing.invalid", baseEnv)
	id := w["workspace_id"].(string)
	t.Cleanup(func() { ws(t, env, nil, "delete", id) })
	if w["network_policy"] != "egress" || !slices.Equal(strSlice(w["allow_hosts"]), []string{"nothing.invalid"}) {
		t.Fatalf("create result: %v %v", w["network_policy"], w["allow_hosts"])
	}
	pid := w["supervisor_pid"]

	m := wsExec(t, env, id, "getent hosts svc.test")
	if m["exit_code"].(float64) == 0 || !hasDenialAt(denialsOf(t, m["network_denials"]), "svc.test", "") {
		t.Fatalf("before set: %v", m)
	}
	if seen := dns.Seen(); len(seen) != 0 {
		t.Fatalf("a refused name reached the resolver: %q", seen)
	}

	var set map[string]any
	mustWS(t, env, &set, "network", "set", id, "--allow-host", "svc.test")
	if !slices.Equal(strSlice(set["allow_hosts"]), []string{"svc.test"}) {
		t.Fatalf("set result: %v", set)
	}
	m = wsExec(t, env, id, "getent hosts svc.test")
	if m["exit_code"].(float64) != 0 || !strings.Contains(m["stdout"].(string), "192.0.2.10") || len(denialsOf(t, m["network_denials"])) != 0 {
		t.Fatalf("after set: %v", m)
	}
	if !slices.Contains(dns.Seen(), "svc.test") {
		t.Errorf("the allowed name was not resolved upstream: %q", dns.Seen())
	}
	var st map[string]any
	mustWS(t, env, &st, "status", id)
	if pid != nil && st["supervisor_pid"] != nil && st["supervisor_pid"] != pid {
		t.Errorf("the workspace restarted: supervisor %v -> %v", pid, st["supervisor_pid"])
	}
	if !slices.Equal(strSlice(st["allow_hosts"]), []string{"svc.test"}) {
		t.Errorf("status allow_hosts = %v", st["allow_hosts"])
	}

	var logs struct {
		Entries []struct {
			NetworkDenials []denial `json:"network_denials"`
		} `json:"entries"`
	}
	mustWS(t, env, &logs, "logs", id)
	if len(logs.Entries) < 2 || !hasDenialAt(logs.Entries[0].NetworkDenials, "svc.test", "") || len(logs.Entries[1].NetworkDenials) != 0 {
		t.Errorf("workspace logs = %+v", logs.Entries)
	}

	r := ws(t, env, nil, "network", "set", id, "--network-policy", "off")
	if r.code != 5 || !strings.Contains(r.stdout, "failed_precondition") {
		t.Errorf("set off: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
	r = ws(t, env, nil, "service", "start", id, "web", "--publish", "18000:8000", "--", "sleep 60")
	if r.code != 5 || !strings.Contains(r.stderr, "egress+published-ports") {
		t.Errorf("publish under egress: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
}

// A server pinned with --network-policy-max / --allow-host-max refuses a
// wider request; one without them still refuses protected ranges.
func TestNetworkPolicyMCPPinned(t *testing.T) {
	requireE2E(t)
	_, env := isolatedHome(t)
	ctx := context.Background()
	cs := mcpClientWith(t, env, []string{"--network-policy-max", "egress", "--allow-host-max", "@pypi"}, nil, nil)
	for _, args := range []map[string]any{
		{"network": true},
		{"network_policy": "egress", "allow_hosts": []string{"evil.example"}},
		{"network_policy": "egress+published-ports", "allow_hosts": []string{"pypi.org"}},
	} {
		_, text, isErr := callTool(t, ctx, cs, "vm_create", args)
		if !isErr || !strings.HasPrefix(text, "invalid_argument") || !strings.Contains(text, "at most egress (@pypi)") {
			t.Errorf("pinned vm_create %v: %q", args, text)
		}
	}
	open := mcpClientWith(t, env, nil, nil, nil)
	_, text, isErr := callTool(t, ctx, open, "vm_create", map[string]any{"network_policy": "egress", "allow_hosts": []string{"127.0.0.1:8080"}})
	if !isErr || !strings.Contains(text, "protected range") {
		t.Errorf("default max, loopback entry: %q", text)
	}
}
