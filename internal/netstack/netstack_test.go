package netstack

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/netstack/dnstest"
	"golang.org/x/net/dns/dnsmessage"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// The tests run a second gVisor stack as "the guest", joined to the Stack
// by a socketpair in QEMU's framing, exactly as QEMU would be. Nothing
// leaves the host: the Stack's Dialer maps the (documentation-range)
// addresses the guest reaches onto servers on this test's loopback, and
// records every dial, so a test proves what was and was not opened.

// world is the host side of a test: fake remote addresses -> loopback.
type world struct {
	mu     sync.Mutex
	routes map[string]string // "203.0.113.7:80" -> "127.0.0.1:NNNN"
	dialed []string
}

func (w *world) dial(ctx context.Context, network, address string) (net.Conn, error) {
	w.mu.Lock()
	to, ok := w.routes[network+":"+address]
	w.dialed = append(w.dialed, network+":"+address)
	w.mu.Unlock()
	if !ok {
		if strings.HasPrefix(address, "127.0.0.1:") {
			to = address // the upstream DNS server
		} else {
			return nil, errors.New("test world: no route to " + address)
		}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, to)
}

func (w *world) dials() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.dialed...)
}

// hostAddr plays the host's own address.
var hostAddr = netip.MustParseAddr("198.51.100.1")

type env struct {
	t     testing.TB
	st    *Stack
	eng   *netpolicy.Engine
	guest *stack.Stack
	dns   *dnstest.Server
	w     *world
}

func newEnv(t testing.TB, p netpolicy.Policy, w *world, names map[string]netip.Addr) *env {
	t.Helper()
	eng, err := netpolicy.NewEngine(p, netpolicy.WithHostAddrs(func() []netip.Addr { return []netip.Addr{hostAddr} }))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := dnstest.Start(names, map[string]string{"secret.test": "x", "allowed.test": "hello"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ds.Close() })
	st, err := New(Config{Engine: eng, Upstream: ds.Addr(), Dialer: w.dial})
	if err != nil {
		t.Fatal(err)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	hostEnd, _ := net.FileConn(os.NewFile(uintptr(fds[0]), "host"))
	guestEnd, _ := net.FileConn(os.NewFile(uintptr(fds[1]), "guest"))
	attached := make(chan error, 1)
	go func() { attached <- st.Attach(hostEnd) }()
	g := guestStack(t, guestEnd)
	t.Cleanup(func() {
		st.Close()
		g.Close()
		guestEnd.Close()
		<-attached
	})
	// Publish needs the stack built; Attach builds it at once.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st.mu.Lock()
		up := st.s != nil
		st.mu.Unlock()
		if up || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return &env{t: t, st: st, eng: eng, guest: g, dns: ds, w: w}
}

// guestStack is the "guest kernel": 10.0.2.15/24, default route 10.0.2.2.
func guestStack(t testing.TB, conn net.Conn) *stack.Stack {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	l := newFrameLink(conn, tcpip.LinkAddress([]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}))
	if err := s.CreateNIC(1, ethernet.New(l)); err != nil {
		t.Fatal(err)
	}
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom4(GuestIP.As4()).WithPrefix()}, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header4Any(), Gateway: tcpip.AddrFrom4(Gateway.As4()), NIC: 1}})
	go l.run()
	return s
}

func header4Any() tcpip.Subnet {
	sub, _ := tcpip.NewSubnet(tcpip.AddrFrom4([4]byte{}), tcpip.MaskFromBytes([]byte{0, 0, 0, 0}))
	return sub
}

func (e *env) dialTCP(addr string) (net.Conn, error) {
	ap := netip.MustParseAddrPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return gonet.DialContextTCP(ctx, e.guest, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(ap.Addr().As4()), Port: ap.Port()}, ipv4.ProtocolNumber)
}

// lookup sends one query from the guest to the stack's resolver.
func (e *env) lookup(name string, typ dnsmessage.Type) (dnsmessage.RCode, []netip.Addr) {
	e.t.Helper()
	c, err := gonet.DialUDP(e.guest, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(DNS.As4()), Port: 53}, ipv4.ProtocolNumber)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name + "."), Type: typ, Class: dnsmessage.ClassINET})
	q, _ := b.Finish()
	if _, err := c.Write(q); err != nil {
		e.t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		e.t.Fatalf("lookup %s: %v", name, err)
	}
	var p dnsmessage.Parser
	h, err := p.Start(buf[:n])
	if err != nil {
		e.t.Fatal(err)
	}
	addrs, _ := answers(buf[:n])
	return h.RCode, addrs
}

func httpServer(t testing.TB, body string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, body+" host="+r.Host)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func (e *env) get(addr, host string) (string, error) {
	c, err := e.dialTCP(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", host)
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), err
	}
	if len(b) == 0 {
		return "", errors.New("connection closed without an answer")
	}
	return string(b), nil
}

func denialsWith(ds []netpolicy.Denial, s string) bool {
	for _, d := range ds {
		if strings.Contains(d.Reason, s) || d.Host == s || d.Address == s {
			return true
		}
	}
	return false
}

func TestEgressReachesAndRefusesHost(t *testing.T) {
	w := &world{routes: map[string]string{"tcp:203.0.113.7:80": httpServer(t, "public")}}
	e := newEnv(t, netpolicy.Policy{Mode: netpolicy.Egress}, w, nil)
	body, err := e.get("203.0.113.7:80", "203.0.113.7")
	if err != nil || !strings.Contains(body, "public") {
		t.Fatalf("egress to a public address: %q, %v", body, err)
	}
	// The gateway (slirp's old door to the host's loopback), the
	// host's own address and link-local are refused before any host
	// socket is opened. (127.0.0.1 is not tried: a guest kernel does not
	// send it out of its NIC, and the stack drops such packets as martians.)
	for _, dst := range []string{"10.0.2.2:80", "169.254.169.254:80", "10.0.2.3:80", hostAddr.String() + ":80"} {
		if _, err := e.dialTCP(dst); err == nil {
			t.Errorf("guest connected to %s", dst)
		}
	}
	for _, d := range w.dials() {
		if d != "tcp:203.0.113.7:80" {
			t.Errorf("a host socket was opened to %s", d)
		}
	}
	ds := e.eng.Denials()
	for _, a := range []string{hostAddr.String(), "169.254.169.254", "10.0.2.2"} {
		if !denialsWith(ds, a) {
			t.Errorf("no denial for %s in %+v", a, ds)
		}
	}
}

func TestAllowlist(t *testing.T) {
	w := &world{routes: map[string]string{
		"tcp:203.0.113.7:80": httpServer(t, "allowed"),
		"tcp:203.0.113.8:80": httpServer(t, "other"),
	}}
	names := map[string]netip.Addr{"allowed.test": netip.MustParseAddr("203.0.113.7"), "other.test": netip.MustParseAddr("203.0.113.8")}
	e := newEnv(t, netpolicy.Policy{Mode: netpolicy.Egress, AllowHosts: []string{"allowed.test"}}, w, names)

	rc, addrs := e.lookup("allowed.test", dnsmessage.TypeA)
	if rc != dnsmessage.RCodeSuccess || len(addrs) != 1 || addrs[0].String() != "203.0.113.7" {
		t.Fatalf("allowed name: rcode %v addrs %v", rc, addrs)
	}
	if rc, _ := e.lookup("other.test", dnsmessage.TypeA); rc != dnsmessage.RCodeNameError {
		t.Errorf("refused name answered with %v, want NXDOMAIN", rc)
	}
	if rc, _ := e.lookup("secret.test", dnsmessage.TypeTXT); rc != dnsmessage.RCodeNameError {
		t.Errorf("TXT of a refused name answered with %v", rc)
	}
	for _, n := range e.dns.Seen() {
		if n != "allowed.test" {
			t.Errorf("the upstream resolver was asked %q", n)
		}
	}
	if body, err := e.get("203.0.113.7:80", "allowed.test"); err != nil || !strings.Contains(body, "allowed") {
		t.Fatalf("allowed name: %q, %v", body, err)
	}
	// A direct IP that no allowed name resolved to: refused at the dial.
	if _, err := e.dialTCP("203.0.113.8:80"); err == nil {
		t.Error("guest connected to an address no allowed name resolved to")
	}
	// The allowed address with another Host: refused before the host dial.
	before := len(w.dials())
	if body, err := e.get("203.0.113.7:80", "other.test"); err == nil {
		t.Errorf("Host mismatch answered: %q", body)
	}
	if len(w.dials()) != before {
		t.Errorf("a host socket was opened for a Host mismatch: %v", w.dials()[before:])
	}
	ds := e.eng.Denials()
	for _, s := range []string{"other.test", "secret.test", "203.0.113.8"} {
		if !denialsWith(ds, s) {
			t.Errorf("no denial mentions %s: %+v", s, ds)
		}
	}
}

func TestSNI(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "tls ok") }))
	t.Cleanup(srv.Close)
	w := &world{routes: map[string]string{"tcp:203.0.113.7:443": strings.TrimPrefix(srv.URL, "https://")}}
	names := map[string]netip.Addr{"allowed.test": netip.MustParseAddr("203.0.113.7")}
	e := newEnv(t, netpolicy.Policy{Mode: netpolicy.Egress, AllowHosts: []string{"allowed.test"}}, w, names)
	e.lookup("allowed.test", dnsmessage.TypeA)
	try := func(sni string) error {
		c, err := e.dialTCP("203.0.113.7:443")
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		return tc.Handshake()
	}
	if err := try("allowed.test"); err != nil {
		t.Fatalf("TLS with the allowed SNI: %v", err)
	}
	if err := try("other.test"); err == nil {
		t.Fatal("TLS with another SNI completed")
	}
	if !denialsWith(e.eng.Denials(), "other.test") {
		t.Error("no denial for the SNI mismatch")
	}
}

func TestLiveUpdate(t *testing.T) {
	w := &world{routes: map[string]string{"tcp:203.0.113.7:80": httpServer(t, "allowed")}}
	names := map[string]netip.Addr{"allowed.test": netip.MustParseAddr("203.0.113.7")}
	e := newEnv(t, netpolicy.Policy{Mode: netpolicy.Egress, AllowHosts: []string{"nothing.test"}}, w, names)
	if rc, _ := e.lookup("allowed.test", dnsmessage.TypeA); rc != dnsmessage.RCodeNameError {
		t.Fatalf("before the change: %v", rc)
	}
	if err := e.eng.Update(netpolicy.Policy{Mode: netpolicy.Egress, AllowHosts: []string{"allowed.test"}}); err != nil {
		t.Fatal(err)
	}
	if rc, _ := e.lookup("allowed.test", dnsmessage.TypeA); rc != dnsmessage.RCodeSuccess {
		t.Fatalf("after the change: %v", rc)
	}
	if _, err := e.get("203.0.113.7:80", "allowed.test"); err != nil {
		t.Fatal(err)
	}
}

func TestUDPRefused(t *testing.T) {
	w := &world{routes: map[string]string{}}
	e := newEnv(t, netpolicy.Policy{Mode: netpolicy.Egress}, w, nil)
	c, err := gonet.DialUDP(e.guest, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4([4]byte{169, 254, 169, 254}), Port: 53}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("x"))
	deadline := time.Now().Add(3 * time.Second)
	for !denialsWith(e.eng.Denials(), "169.254.169.254") {
		if time.Now().After(deadline) {
			t.Fatal("no denial for a udp datagram to link-local")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(w.dials()) != 0 {
		t.Errorf("host sockets opened: %v", w.dials())
	}
}

func TestPublish(t *testing.T) {
	e := newEnv(t, netpolicy.Policy{Mode: netpolicy.EgressPublished}, &world{}, nil)
	ln, err := gonet.ListenTCP(e.guest, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(GuestIP.As4()), Port: 8080}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "from guest") }))
	p, err := e.st.Publish(0, 8080)
	if err != nil {
		t.Fatal(err)
	}
	if p.HostPort == 0 || p.HostAddress != "127.0.0.1" {
		t.Fatalf("published %+v", p)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", p.HostPort)
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "from guest" {
		t.Fatalf("published port answered %q", b)
	}
	if _, err := e.st.Publish(p.HostPort, 8081); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("publishing a bound host port: %v, want failed precondition", err)
	}
	// A model asking for a privileged host port (a system service's, on
	// a root supervisor) is refused before anything listens.
	for _, hp := range []int{1, 53, 80, 443, 1023, -1, 65536} {
		if _, err := e.st.Publish(hp, 8082); !errors.Is(err, errdefs.ErrInvalidArgument) || errdefs.Hint(err) == "" {
			t.Errorf("publishing on host port %d: %v, want invalid argument with a hint", hp, err)
		}
	}
	if _, err := e.st.Publish(80, 8082); err == nil || !strings.Contains(err.Error(), "privileged") {
		t.Errorf("host port 80: %v, want it called privileged", err)
	}
	if err := e.st.Unpublish(8080); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.HostPort), time.Second); err == nil {
		c.Close()
		t.Fatal("the port still accepts after Unpublish")
	}
	// A live change to a policy without published ports closes them.
	p, err = e.st.Publish(0, 8080)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.SetPolicy(netpolicy.Policy{Mode: netpolicy.Egress}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.HostPort), time.Second); err == nil {
		c.Close()
		t.Fatal("the port still accepts under a policy without published ports")
	}
	if len(e.st.Published()) != 0 {
		t.Fatalf("published: %v", e.st.Published())
	}
}

func TestFrameTooLargeEndsLink(t *testing.T) {
	a, b := net.Pipe()
	l := newFrameLink(a, gatewayMAC)
	done := make(chan error, 1)
	go func() { done <- l.run() }()
	_, _ = b.Write([]byte{0xff, 0xff, 0xff, 0xff})
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a 4 GiB frame length did not end the link")
	}
	b.Close()
}

// A server that speaks first, at an address a CIDR entry admits, is not
// held up by the server-name read that name-bound addresses get.
func TestCIDRServerSpeaksFirst(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, "SSH-2.0-test\r\n")
			c.Close()
		}
	}()
	w := &world{routes: map[string]string{"tcp:203.0.113.9:22": ln.Addr().String()}}
	e := newEnv(t, netpolicy.Policy{Mode: netpolicy.Egress, AllowHosts: []string{"allowed.test", "203.0.113.0/24"}}, w, nil)
	c, err := e.dialTCP("203.0.113.9:22")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(peekTimeout / 2))
	b, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(b), "SSH-2.0") {
		t.Fatalf("banner %q, %v", b, err)
	}
}

// BenchmarkDownload measures the stack alone (no VM): a guest-side gVisor
// stack downloads from a loopback server through it. Its MB/s is the
// stack's ceiling; scripts/bench-network.sh measures real guests.
func BenchmarkDownload(b *testing.B) {
	const size = 100 << 20
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		buf := make([]byte, 256<<10)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for sent := 0; sent < size; sent += len(buf) {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	w := &world{routes: map[string]string{"tcp:203.0.113.7:80": ln.Addr().String()}}
	e := newEnv(b, netpolicy.Policy{Mode: netpolicy.Egress}, w, nil)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := e.dialTCP("203.0.113.7:80")
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		if n != size {
			b.Fatalf("got %d bytes", n)
		}
	}
}
