package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/netstack/dnstest"
)

// The network tests send guest traffic only to addresses on this machine:
// a network namespace the test creates (a veth pair, its addresses routed
// into it and checked with `ip route get` before any packet is sent), the
// host's loopback and the host's own addresses. The guest's DNS goes to a
// tiny server on the host's loopback (PYRO_DNS_UPSTREAM). Decisions about
// metadata, private and public addresses in general are asserted on the
// policy engine in internal/netpolicy's unit tests.

// Addresses of the test namespace: a private subnet (admitted only by an
// explicit CIDR entry) and two documentation addresses routed into it,
// which stand for public servers reached by name.
const (
	nsHostIP   = "10.213.7.1" // the host's end of the veth: a host address
	nsPrivate  = "10.213.7.2"
	nsCIDR     = "10.213.7.0/24"
	nsAllowed  = "198.51.100.2" // allowed.test
	nsOther    = "198.51.100.3" // other.test
	netTestEnv = "debian:12"    // curl and python3
)

// testNetns is a network namespace with an HTTP server on :80 and an HTTPS
// server on :443 (self-signed) answering "ns host=HOST sni=SNI".
type testNetns struct {
	name string
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the network tests need iproute2's ip")
	}
	suffix := fmt.Sprintf("%d", os.Getpid()%100000)
	n := &testNetns{name: "pyro-e2e-" + suffix}
	vh, vn := "pyvh"+suffix, "pyvn"+suffix
	_ = exec.Command("ip", "netns", "del", n.name).Run()
	run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.name).Run() })
	run(t, "ip", "link", "add", vh, "type", "veth", "peer", "name", vn)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", vh).Run() })
	run(t, "ip", "link", "set", vn, "netns", n.name)
	run(t, "ip", "addr", "add", nsHostIP+"/24", "dev", vh)
	run(t, "ip", "link", "set", vh, "up")
	run(t, "ip", "-n", n.name, "addr", "add", nsPrivate+"/24", "dev", vn)
	for _, a := range []string{nsAllowed, nsOther} {
		run(t, "ip", "-n", n.name, "addr", "add", a+"/32", "dev", vn)
		run(t, "ip", "route", "add", a+"/32", "dev", vh, "src", nsHostIP)
	}
	run(t, "ip", "-n", n.name, "link", "set", vn, "up")
	run(t, "ip", "-n", n.name, "link", "set", "lo", "up")
	// Before any packet: each address must route into the namespace.
	for _, a := range []string{nsPrivate, nsAllowed, nsOther} {
		var routes []struct {
			Dev string `json:"dev"`
		}
		if err := json.Unmarshal([]byte(run(t, "ip", "-j", "route", "get", a)), &routes); err != nil || len(routes) != 1 || routes[0].Dev != vh {
			t.Fatalf("%s does not route into the test namespace (%v): refusing to send traffic", a, routes)
		}
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sni := ""
		if r.TLS != nil {
			sni = r.TLS.ServerName
		}
		fmt.Fprintf(w, "ns host=%s sni=%s\n", r.Host, sni)
	})
	var plain, tlsLn net.Listener
	n.do(t, func() {
		var err error
		if plain, err = net.Listen("tcp4", ":80"); err != nil {
			t.Fatal(err)
		}
		if tlsLn, err = net.Listen("tcp4", ":443"); err != nil {
			t.Fatal(err)
		}
	})
	srv := &http.Server{Handler: handler}
	go srv.Serve(plain)
	tsrv := httptest.NewUnstartedServer(handler)
	tsrv.Listener = tlsLn
	tsrv.StartTLS()
	t.Cleanup(func() { srv.Close(); tsrv.Close() })
	return n
}

// do runs fn on a thread inside the namespace: sockets it opens stay there.
func (n *testNetns) do(t *testing.T, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open("/var/run/netns/" + n.name)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			panic("cannot return to the host's network namespace: " + err.Error())
		}
	}()
	fn()
}

// hostServer listens on addr and answers "host-secret" to any connection.
func hostServer(t *testing.T, addr string) int {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "HTTP/1.0 200 OK\r\n\r\nhost-secret\n")
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// hostAddress is one of the host's own non-loopback IPv4 addresses
// outside the test namespace's subnet.
func hostAddress(t *testing.T) string {
	t.Helper()
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() && !strings.HasPrefix(p.Addr().String(), "10.213.7.") {
			return p.Addr().String()
		}
	}
	t.Skip("the host has no non-loopback IPv4 address")
	return ""
}

type denial struct {
	Host    string `json:"host"`
	Address string `json:"address"`
	Port    int    `json:"port"`
	Reason  string `json:"reason"`
}

type execOut struct {
	ExitCode       int      `json:"exit_code"`
	Stdout         string   `json:"stdout"`
	Stderr         string   `json:"stderr"`
	NetworkDenials []denial `json:"network_denials"`
}

func netExec(t *testing.T, env []string, id, script string) execOut {
	t.Helper()
	var out execOut
	r := ws(t, env, nil, "exec", id, "--", "sh", "-c", script)
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("exec %q: exit %d %s %s", script, r.code, r.stdout, r.stderr)
	}
	return out
}

func hasDenial(ds []denial, what string) bool {
	for _, d := range ds {
		if d.Host == what || d.Address == what {
			return true
		}
	}
	return false
}

// txtQuery is a guest-side DNS TXT lookup (python3, no dig in the image);
// it prints the answer's RCODE.
const txtQuery = `python3 -c '
import socket,struct,sys
name=sys.argv[1]
q=struct.pack(">HHHHHH",7,0x0100,1,0,0,0)+b"".join(bytes([len(l)])+l.encode() for l in name.split("."))+b"\x00"+struct.pack(">HH",16,1)
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(5); s.sendto(q,("10.0.2.3",53))
r=s.recv(4096); print("rcode=%d" % (r[3]&15))' `

// TestNetworkPolicyEnforced: one workspace on the policed network, with an
// allowlist of a name and the namespace's private CIDR; then a live change.
func TestNetworkPolicyEnforced(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, netTestEnv)
	ns := newTestNetns(t)
	_ = ns
	dns, err := dnstest.Start(map[string]netip.Addr{
		"allowed.test": netip.MustParseAddr(nsAllowed),
		"other.test":   netip.MustParseAddr(nsOther),
	}, map[string]string{"secret.test": "leak", "allowed.test": "ok"})
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	loopPort := hostServer(t, "127.0.0.1:0")
	anyPort := hostServer(t, "0.0.0.0:0")
	hostIP := hostAddress(t)

	_, env := isolatedHome(t)
	env = append(env, "PYRO_DNS_UPSTREAM="+dns.Addr())
	var w wsStatus
	mustWS(t, env, &w, "create", netTestEnv, "--network-policy", "egress+published-ports",
		"--allow-host", "allowed.test", "--allow-host", nsCIDR)
	t.Cleanup(func() { ws(t, env, nil, "delete", w.WorkspaceID) })
	id := w.WorkspaceID
	curl := "curl -sS -m 8 "

	// The private namespace server, admitted by its CIDR entry.
	if o := netExec(t, env, id, curl+"http://"+nsPrivate+"/"); o.ExitCode != 0 || !strings.Contains(o.Stdout, "ns host="+nsPrivate) {
		t.Fatalf("CIDR entry: %+v", o)
	}
	// The host: its loopback through the gateway (slirp's 10.0.2.2), its own
	// address, and its address inside the allowed CIDR are all refused.
	for _, u := range []string{
		fmt.Sprintf("http://10.0.2.2:%d/", loopPort),
		fmt.Sprintf("http://%s:%d/", hostIP, anyPort),
		fmt.Sprintf("http://%s:%d/", nsHostIP, anyPort),
	} {
		o := netExec(t, env, id, curl+u)
		if o.ExitCode == 0 || strings.Contains(o.Stdout, "host-secret") {
			t.Errorf("guest reached the host at %s: %+v", u, o)
		}
		addr := strings.Split(strings.TrimPrefix(u, "http://"), ":")[0]
		if !hasDenial(o.NetworkDenials, addr) {
			t.Errorf("no denial for %s in %+v", addr, o.NetworkDenials)
		}
	}
	// The allowed name, over HTTP and HTTPS (its SNI).
	o := netExec(t, env, id, curl+"http://allowed.test/ && "+curl+"-k https://allowed.test/")
	if o.ExitCode != 0 || !strings.Contains(o.Stdout, "ns host=allowed.test sni=\n") || !strings.Contains(o.Stdout, "sni=allowed.test") {
		t.Fatalf("allowed name: %+v", o)
	}
	// Another name, a direct IP, a TXT lookup of a refused name, an SNI
	// (and a Host) that differ from the name the address came from.
	o = netExec(t, env, id, curl+"http://other.test/; echo; "+curl+"http://"+nsOther+"/; echo; "+txtQuery+"secret.test; "+
		curl+"-k --resolve other.test:443:"+nsAllowed+" https://other.test/; echo; "+curl+"-H 'Host: other.test' http://allowed.test/")
	if strings.Contains(o.Stdout, "ns host=") || !strings.Contains(o.Stdout, "rcode=3") {
		t.Fatalf("refusals: %+v", o)
	}
	for _, want := range []string{"other.test", nsOther, "secret.test"} {
		if !hasDenial(o.NetworkDenials, want) {
			t.Errorf("no denial for %s in %+v", want, o.NetworkDenials)
		}
	}
	for _, n := range dns.Seen() {
		if n != "allowed.test" {
			t.Errorf("a refused name reached the upstream resolver: %q", n)
		}
	}

	// A published port answers on the host's loopback and closes on stop.
	var svc struct {
		PublishedPorts []struct {
			HostAddress string `json:"host_address"`
			HostPort    int    `json:"host_port"`
			GuestPort   int    `json:"guest_port"`
		} `json:"published_ports"`
	}
	mustWS(t, env, &svc, "service", "start", id, "web", "--publish", "8000", "--ready-tcp", "127.0.0.1:8000", "--",
		"python3", "-m", "http.server", "8000", "--bind", "0.0.0.0")
	if len(svc.PublishedPorts) != 1 || svc.PublishedPorts[0].HostAddress != "127.0.0.1" || svc.PublishedPorts[0].HostPort == 0 {
		t.Fatalf("published: %+v", svc)
	}
	pub := fmt.Sprintf("http://127.0.0.1:%d/", svc.PublishedPorts[0].HostPort)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(pub)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("published port: %v %v", resp, err)
	}
	resp.Body.Close()
	mustWS(t, env, nil, "service", "stop", id, "web")
	if c, err := net.DialTimeout("tcp", strings.TrimSuffix(strings.TrimPrefix(pub, "http://"), "/"), time.Second); err == nil {
		c.Close()
		t.Fatal("the published port still accepts after service stop")
	}

	// A live change: other.test in, allowed.test out, no restart.
	mustWS(t, env, nil, "network", "set", id, "--allow-host", "other.test")
	o = netExec(t, env, id, curl+"http://other.test/; echo; "+curl+"http://allowed.test/")
	if !strings.Contains(o.Stdout, "ns host=other.test") || strings.Contains(o.Stdout, "ns host=allowed.test") {
		t.Fatalf("after the live change: %+v", o)
	}
	if !hasDenial(o.NetworkDenials, "allowed.test") {
		t.Errorf("no denial for allowed.test after it was removed: %+v", o.NetworkDenials)
	}
}
