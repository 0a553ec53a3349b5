package pool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeGuest answers HTTP on each stream with its id and the identity it
// was handed out as.
type fakeGuest struct {
	id      string
	mu      sync.Mutex
	as      string
	byPID   int
	resumed bool
	done    chan struct{}
	closed  atomic.Bool
	failOut bool
	// hold, when set, keeps HandOut waiting until it is closed (holding
	// is closed when it starts waiting).
	hold, holding chan struct{}
}

func (g *fakeGuest) ID() string { return g.id }
func (g *fakeGuest) Info() GuestInfo {
	return GuestInfo{Backend: "qemu", Acceleration: "tcg", Isolation: "vm", Start: "warm", BootMS: 7, VMMPID: 4242}
}
func (g *fakeGuest) HandOut(_ context.Context, to Claimer) error {
	if g.failOut {
		return errors.New("guest did not answer")
	}
	g.mu.Lock()
	hold, holding := g.hold, g.holding
	g.mu.Unlock()
	if hold != nil {
		close(holding)
		<-hold
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.as, g.byPID, g.resumed = to.ID, to.PID, true
	return nil
}
func (g *fakeGuest) OpenStream(context.Context) (net.Conn, error) {
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		req, err := http.ReadRequest(bufio.NewReader(b))
		if err != nil {
			return
		}
		g.mu.Lock()
		body := g.id + " as " + g.as
		g.mu.Unlock()
		fmt.Fprintf(b, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		_ = req
	}()
	return a, nil
}
func (g *fakeGuest) Done() <-chan struct{} { return g.done }
func (g *fakeGuest) Close() error {
	if g.closed.CompareAndSwap(false, true) {
		close(g.done)
	}
	return nil
}

type fakeFiller struct {
	mu      sync.Mutex
	n       int
	guests  []*fakeGuest
	failOut bool
	// only, when not 0, is how many guests it makes: later fills wait
	// until the pool gives up on them.
	only int
}

func (f *fakeFiller) fill(ctx context.Context) (Guest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.only > 0 && f.n >= f.only {
		f.mu.Unlock()
		<-ctx.Done()
		f.mu.Lock()
		return nil, ctx.Err()
	}
	f.n++
	g := &fakeGuest{id: fmt.Sprintf("pooled%d", f.n), done: make(chan struct{}), failOut: f.failOut}
	f.guests = append(f.guests, g)
	return g, nil
}

func (f *fakeFiller) all() []*fakeGuest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*fakeGuest(nil), f.guests...)
}

var testKey = Key{Environment: "debian:12", EnvDigest: "sha256:abc", VCPUs: 1, MemMiB: 256, Network: "off"}

func startTest(t *testing.T, size int, f *fakeFiller) (string, *Server) {
	t.Helper()
	return startKey(t, testKey, size, f)
}

func startKey(t *testing.T, key Key, size int, f *fakeFiller) (string, *Server) {
	t.Helper()
	root, err := os.MkdirTemp("", "pool")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	s, err := Start(Config{Root: root, Key: key, Size: size, Fill: f.fill})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx, size); err != nil {
		t.Fatal(err)
	}
	return root, s
}

func TestClaimHandsOutAndRefills(t *testing.T) {
	f := &fakeFiller{}
	root, s := startTest(t, 2, f)
	ctx := context.Background()
	l, err := Claim(ctx, root, testKey, "run1")
	if err != nil {
		t.Fatal(err)
	}
	if l.Guest != "pooled1" || l.Info.Backend != "qemu" {
		t.Fatalf("lease %+v", l)
	}
	// The claimer reaches the guest's agent through the pool.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return l.Dial(ctx) }}}
	resp, err := hc.Get("http://pyro-agent/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	var buf [64]byte
	n, _ := resp.Body.Read(buf[:])
	resp.Body.Close()
	if got := string(buf[:n]); got != "pooled1 as run1" {
		t.Fatalf("agent answered %q", got)
	}
	// Refill: the pool makes a third guest in the background.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.WaitReady(wctx, 2); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.Leased != 1 || st.Served != 1 || len(f.all()) != 3 {
		t.Fatalf("status %+v, %d guests made", st, len(f.all()))
	}
	// The end of the lease destroys the guest.
	g := f.all()[0]
	l.Close()
	select {
	case <-g.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("guest outlived its lease")
	}
}

func TestClaimMismatchAndEmpty(t *testing.T) {
	f := &fakeFiller{only: 1}
	root, _ := startTest(t, 1, f)
	ctx := context.Background()
	other := testKey
	other.MemMiB = 512
	if _, err := Claim(ctx, root, other, "run1"); !errors.Is(err, ErrNoPool) {
		t.Fatalf("other key: %v", err)
	}
	// Same socket, wrong key: refused, not handed out.
	k := testKey
	r, c, err := call(ctx, SocketPath(root, testKey), request{Op: "claim", Key: &other, ID: "run1"})
	if err != nil || r.Error == "" || r.Claimed != nil {
		t.Fatalf("mismatched claim: %+v %v", r, err)
	}
	c.Close()
	l, err := Claim(ctx, root, k, "run1")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// The refill never comes: the second claim finds the pool empty
	// (emptying s.ready instead raced with a refill landing after it).
	if _, err := Claim(ctx, root, k, "run2"); !errors.Is(err, ErrEmpty) {
		t.Fatalf("empty pool: %v", err)
	}
}

func TestHandOutFailureDestroysGuest(t *testing.T) {
	f := &fakeFiller{failOut: true}
	root, _ := startTest(t, 1, f)
	if _, err := Claim(context.Background(), root, testKey, "run1"); !errors.Is(err, ErrEmpty) {
		t.Fatalf("claim of a broken guest: %v", err)
	}
	if g := f.all()[0]; !g.closed.Load() {
		t.Fatal("a guest that failed its hand-out was not destroyed")
	}
}

func TestAttachNeedsToken(t *testing.T) {
	f := &fakeFiller{}
	root, _ := startTest(t, 1, f)
	l, err := Claim(context.Background(), root, testKey, "run1")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	bad := *l
	bad.token = "00000000000000000000000000000000"
	if _, err := bad.Dial(context.Background()); err == nil {
		t.Fatal("attach with a wrong token succeeded")
	}
}

func TestCloseLeavesNothing(t *testing.T) {
	f := &fakeFiller{}
	root, s := startTest(t, 2, f)
	l, err := Claim(context.Background(), root, testKey, "run1")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s.Close()
	for _, g := range f.all() {
		if !g.closed.Load() {
			t.Fatalf("guest %s outlived the pool", g.id)
		}
	}
	if _, err := os.Stat(SocketPath(root, testKey)); !os.IsNotExist(err) {
		t.Fatalf("socket left: %v", err)
	}
	// A second pool of the same key may start now.
	s2, err := Start(Config{Root: root, Key: testKey, Size: 1, Fill: f.fill})
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
}

func TestSecondPoolRefusedAndList(t *testing.T) {
	f := &fakeFiller{}
	root, _ := startTest(t, 1, f)
	if _, err := Start(Config{Root: root, Key: testKey, Size: 1, Fill: f.fill}); err == nil {
		t.Fatal("second pool of one key started")
	}
	// A dead pool's socket is removed by List.
	dead := filepath.Join(root, DirName, "0000000000000000.sock")
	ln, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	list, err := List(context.Background(), root)
	if err != nil || len(list) != 1 || list[0].Key != testKey || list[0].Ready != 1 {
		t.Fatalf("list %+v %v", list, err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatalf("dead socket kept: %v", err)
	}
	st, err := Stop(context.Background(), SocketPath(root, testKey))
	if err != nil || st.Size != 1 {
		t.Fatalf("stop: %+v %v", st, err)
	}
}

func TestValidClaimed(t *testing.T) {
	good := Claimed{Guest: "abc123", Token: "0123456789abcdef0123456789abcdef", HandoutMS: 3,
		GuestInfo: GuestInfo{Backend: "qemu", Acceleration: "tcg", Isolation: "vm", Start: "warm"}}
	if err := validClaimed(good, false); err != nil {
		t.Fatal(err)
	}
	// A workspace pool's claim carries no token (there is no lease).
	noToken := good
	noToken.Token = ""
	if err := validClaimed(noToken, true); err != nil {
		t.Fatal(err)
	}
	if validClaimed(noToken, false) == nil {
		t.Error("a run's claim without a token was accepted")
	}
	for name, mut := range map[string]func(*Claimed){
		"id":        func(c *Claimed) { c.Guest = "../x" },
		"token":     func(c *Claimed) { c.Token = "zz" },
		"isolation": func(c *Claimed) { c.Isolation = "namespaces" },
		"start":     func(c *Claimed) { c.Start = "pool" },
		"ms":        func(c *Claimed) { c.HandoutMS = -1 },
	} {
		c := good
		mut(&c)
		if validClaimed(c, true) == nil {
			t.Errorf("%s: bad claim accepted", name)
		}
	}
}

// A workspace pool hands a guest over for good: the claim answers with no
// token (there is no lease), the claimer's process is named to the guest,
// the pool forgets it (closing the claim or the pool leaves it alone) and
// refills; no agent stream is served for it.
func TestWorkspaceClaimTransfers(t *testing.T) {
	f := &fakeFiller{}
	wsKey := testKey
	wsKey.Workspace = true
	root, s := startKey(t, wsKey, 1, f)
	ctx := context.Background()
	if _, err := Claim(ctx, root, testKey, "run1"); !errors.Is(err, ErrNoPool) {
		t.Fatalf("a run claimed from a workspace pool: %v", err)
	}
	l, err := Claim(ctx, root, wsKey, "ws1")
	if err != nil {
		t.Fatal(err)
	}
	g := f.all()[0]
	g.mu.Lock()
	as, by := g.as, g.byPID
	g.mu.Unlock()
	if l.Guest != g.id || l.token != "" || as != "ws1" || by != os.Getpid() {
		t.Fatalf("claim %+v: handed out as %q to pid %d", l, as, by)
	}
	if _, err := l.Dial(ctx); err == nil {
		t.Fatal("an agent stream of a handed-over workspace was served")
	}
	l.Close()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.WaitReady(wctx, 1); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.Leased != 0 || st.Served != 1 {
		t.Fatalf("status %+v", st)
	}
	s.Close()
	if g.closed.Load() {
		t.Fatal("the pool destroyed a workspace it had handed over")
	}
	if !f.all()[1].closed.Load() {
		t.Fatal("the pool's unclaimed workspace outlived it")
	}
}

// A workspace handed out to a claimer that went away meanwhile (its
// deadline passed during the hand-out) is ended by the pool: nobody would
// complete it, and its creator, the claimer, may live on for long.
func TestWorkspaceClaimerGoneDuringHandOut(t *testing.T) {
	f := &fakeFiller{}
	wsKey := testKey
	wsKey.Workspace = true
	root, _ := startKey(t, wsKey, 1, f)
	g := f.all()[0]
	hold, holding := make(chan struct{}), make(chan struct{})
	g.mu.Lock()
	g.hold, g.holding = hold, holding
	g.mu.Unlock()
	c := sendClaim(t, root, wsKey, "ws1")
	select {
	case <-holding:
	case <-time.After(5 * time.Second):
		t.Fatal("no hand-out")
	}
	c.Close() // the claimer gives up
	close(hold)
	waitClosed(t, g, "a workspace handed out to a claimer that went away was left")
}

// A workspace claimer that got the pool's answer too late (its read timed
// out after the pool wrote it) or refused it never adopts the workspace:
// it says nothing and closes, and the pool ends the workspace, instead of
// leaving it handed to a claimer that went on without it.
func TestWorkspaceAnswerNotAdopted(t *testing.T) {
	f := &fakeFiller{}
	wsKey := testKey
	wsKey.Workspace = true
	root, _ := startKey(t, wsKey, 1, f)
	g := f.all()[0]
	c := sendClaim(t, root, wsKey, "ws1")
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if line, err := readLine(c, maxReplyBytes); err != nil || !strings.Contains(string(line), g.id) {
		t.Fatalf("answer %q %v", line, err)
	}
	c.Close() // gave up (or refused the answer) without adopting it
	waitClosed(t, g, "a workspace its claimer did not adopt was left")
}

// A fill that gets stuck (a pooled guest whose pause never answers) ends
// with its bound, and the pool goes on filling.
func TestStuckFillIsBounded(t *testing.T) {
	f := &fakeFiller{}
	var calls atomic.Int32
	fill := func(ctx context.Context) (Guest, error) {
		if calls.Add(1) == 1 {
			<-ctx.Done() // stuck until its context ends
			return nil, ctx.Err()
		}
		return f.fill(ctx)
	}
	root, err := os.MkdirTemp("", "pool")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	s, err := Start(Config{Root: root, Key: testKey, Size: 1, Fill: fill, FillTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx, 1); err != nil {
		t.Fatalf("the pool stopped filling after a stuck fill: %v", err)
	}
	if st := s.Status(); st.Failures != 1 || !strings.Contains(st.LastError, "not done within") {
		t.Fatalf("status %+v", st)
	}
}

// sendClaim dials the pool of key under root and sends a claim for id, as
// a claimer does, and returns the connection for the test to go on with.
func sendClaim(t *testing.T, root string, key Key, id string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", SocketPath(root, key))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeJSONLine(c, request{Op: "claim", Key: &key, ID: id}); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitClosed fails with msg unless the pool closes g within 5 s.
func waitClosed(t *testing.T, g *fakeGuest, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !g.closed.Load() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
