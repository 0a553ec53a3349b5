package agent

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// TestReleaseClaimsQuietEpoch: a host push's release that names the quiet
// epoch the host holds the listing of claims it as a quiet exec does (only
// at that epoch, once, with no user process left), and the handler then
// sees the claim (and lists nothing); any other release begins a call as
// before and sees none.
func TestReleaseClaimsQuietEpoch(t *testing.T) {
	s := New(Options{})
	cg := t.TempDir()
	events := filepath.Join(cg, "cgroup.events")
	if err := os.WriteFile(events, []byte("populated 0\nfrozen 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.user = &userCgroup{dir: cg}
	var seen uint64
	h := s.tracked(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = claimedQuiet(r) }))
	release := func(q string) uint64 {
		seen = 1<<64 - 1
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, agentapi.PathLayerRelease+"?manifest=1&ms=1000"+q, nil))
		return seen
	}
	e := s.quiet.current()
	if got := release("&expect=" + strconv.FormatUint(e+1, 10)); got != 0 {
		t.Fatalf("a release at another epoch claimed %d", got)
	}
	e = s.quiet.current()
	if got := release("&expect=" + strconv.FormatUint(e, 10)); got != e {
		t.Fatalf("a release at the quiet epoch %d claimed %d", e, got)
	}
	if s.quiet.current() == e {
		t.Fatal("a claimed release did not move the epoch on")
	}
	if got := release("&expect=" + strconv.FormatUint(e, 10)); got != 0 {
		t.Fatal("the same quiet epoch was claimed twice")
	}
	e = s.quiet.current()
	if err := os.WriteFile(events, []byte("populated 1\nfrozen 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := release("&expect=" + strconv.FormatUint(e, 10)); got != 0 {
		t.Fatal("claimed with a user process left")
	}
	if got := release(""); got != 0 {
		t.Fatal("a release without expect claimed an epoch")
	}
}
