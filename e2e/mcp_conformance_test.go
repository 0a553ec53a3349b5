package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The official MCP conformance suite, pinned; it needs Node >= 22, which
// the npm package node@22 provides next to it.
const (
	conformanceVersion = "0.1.16"
	conformanceNode    = "22"
	// conformanceExpected lists the scenarios that need the suite's own
	// reference server (its test tools, prompts and resources); every
	// other scenario must pass, and one of these passing fails the run
	// too (the suite calls that a stale baseline).
	conformanceExpected = "testdata/conformance-expected-failures.yml"
)

// ensureConformance installs the suite and its Node into a cache directory
// outside the checkout ($XDG_CACHE_HOME/pyro-ci or ~/.cache/pyro-ci) unless
// a working copy is already there, and returns the directory whose
// node_modules/.bin holds `node` and `conformance`. The cache only saves
// time: a missing or broken one is installed afresh. It skips only when
// npm is absent.
func ensureConformance(t *testing.T) string {
	t.Helper()
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm is not installed: the MCP conformance suite needs npm to install @modelcontextprotocol/conformance and node@22 (scripts/host-packages.sh installs it)")
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache")
	}
	dir := filepath.Join(cache, "pyro-ci", "conformance-"+conformanceVersion+"-node"+conformanceNode)
	if conformanceWorks(dir) {
		return dir
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".install-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", tmp,
		"node@"+conformanceNode, "@modelcontextprotocol/conformance@"+conformanceVersion)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("npm install of the conformance suite: %v\n%s", err, out.String())
	}
	t.Logf("npm install of the conformance suite took %s", time.Since(start).Round(time.Millisecond))
	if !conformanceWorks(tmp) {
		t.Fatalf("the freshly installed conformance suite in %s does not run (want conformance %s on node %s)", tmp, conformanceVersion, conformanceNode)
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// conformanceWorks reports whether dir holds the pinned suite and a Node
// of the pinned major version that runs it.
func conformanceWorks(dir string) bool {
	bin := filepath.Join(dir, "node_modules", ".bin")
	v, err := exec.Command(filepath.Join(bin, "node"), "--version").Output()
	if err != nil || !strings.HasPrefix(strings.TrimSpace(string(v)), "v"+conformanceNode+".") {
		return false
	}
	cmd := exec.Command(filepath.Join(bin, "conformance"), "--version")
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	v, err = cmd.Output()
	return err == nil && strings.TrimSpace(string(v)) == conformanceVersion
}

// httpServe starts `pyro mcp serve --http 127.0.0.1:0` with extra flags and
// a random token; it returns the server's URL and the token, and stops the
// server at the end of the test.
func httpServe(t *testing.T, env []string, extra ...string) (string, string) {
	t.Helper()
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	token := hex.EncodeToString(b)
	cmd := exec.Command(pyroBin, append([]string{"mcp", "serve", "--http", "127.0.0.1:0"}, extra...)...)
	cmd.Env = append(os.Environ(), append(env, "PYRO_MCP_TOKEN="+token)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	lines := bufio.NewScanner(stderr)
	re := regexp.MustCompile(`listening on (http://\S+)`)
	for lines.Scan() {
		if m := re.FindStringSubmatch(lines.Text()); m != nil {
			go io.Copy(io.Discard, stderr)
			return m[1], token
		}
		t.Logf("mcp serve: %s", lines.Text())
	}
	t.Fatal("pyro mcp serve --http printed no listening line")
	return "", ""
}

// TestMCPConformance runs the official conformance suite's server
// scenarios against `pyro mcp serve --http` on loopback. The suite cannot
// send a bearer token, so it talks to a loopback proxy that adds one and
// passes everything else (Host, Origin, SSE streams) through unchanged; the
// server allows the proxy's origin as a person would allow a web client's.
// No guest boots: the scenarios list, ping, log and probe the transport.
func TestMCPConformance(t *testing.T) {
	requireE2E(t)
	dir := ensureConformance(t)
	_, env := isolatedHome(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	serverURL, token := httpServe(t, env, "--allow-origin", "http://localhost:"+port, "--allow-origin", "http://127.0.0.1:"+port)
	target, err := url.Parse(serverURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{
		ErrorLog: log.New(io.Discard, "", 0),
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: target.Scheme, Host: target.Host})
			r.Out.Host = r.In.Host // the Host the client sent, for the DNS-rebinding scenario
			r.Out.Header.Set("Authorization", "Bearer "+token)
		},
		FlushInterval: -1,
	}
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	defer srv.Close()

	expected, err := filepath.Abs(conformanceExpected)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "node_modules", ".bin")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "conformance"), "server",
		"--url", "http://localhost:"+port+"/mcp", "--expected-failures", expected, "--output-dir", t.TempDir())
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "NO_COLOR=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	runErr := cmd.Run()
	text := regexp.MustCompile("\x1b\\[[0-9;]*m").ReplaceAllString(out.String(), "")
	summary := ""
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "Total: ") {
			summary = line
		}
	}
	// The suite's own summary line, shown by scripts/test.sh for a pass too.
	t.Logf("[summary] MCP conformance %s (server scenarios, %s): %s", conformanceVersion, time.Since(start).Round(time.Second), summary)
	if runErr != nil || summary == "" {
		t.Fatalf("conformance suite: %v (a scenario outside %s failed, or one listed there now passes)\n%s", runErr, conformanceExpected, tail(text, 6000))
	}
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}
