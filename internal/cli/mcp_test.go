package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// syncBuffer is a bytes.Buffer safe for a server goroutine and a test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runCLI runs pyro with args until ctx ends and returns its error.
func runCLI(ctx context.Context, t *testing.T, stderr *syncBuffer, args ...string) error {
	t.Helper()
	a := &app{stdout: &syncBuffer{}, stderr: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

func TestMCPServeRemoteNeedsTLS(t *testing.T) {
	t.Setenv("PYRO_HOME", t.TempDir())
	for _, args := range [][]string{
		{"mcp", "serve", "--http", "0.0.0.0:0", "--allow-remote"},
		{"mcp", "serve", "--http", "127.0.0.1:0", "--allow-remote"},
		{"mcp", "serve", "--http", "0.0.0.0:0", "--allow-remote", "--tls-cert", "c.pem"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := runCLI(ctx, t, &syncBuffer{}, args...)
		cancel()
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "--tls-") {
			t.Errorf("%v: want an invalid_argument naming --tls-cert/--tls-key, got %v", args, err)
		}
	}
}

func TestMCPServeTLS(t *testing.T) {
	t.Setenv("PYRO_HOME", t.TempDir())
	t.Setenv(tokenEnv, "secret-token")
	certFile, keyFile := selfSigned(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- runCLI(ctx, t, stderr, "mcp", "serve", "--http", addr, "--allow-remote", "--tls-cert", certFile, "--tls-key", keyFile)
	}()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(10 * time.Second)
	var resp *http.Response
	for {
		req, _ := http.NewRequest("GET", "https://"+addr+"/mcp", nil)
		resp, err = client.Do(req)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no HTTPS answer: %v\nstderr: %s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.TLS == nil {
		t.Errorf("HTTPS without token: status %d, tls %v", resp.StatusCode, resp.TLS != nil)
	}
	if !strings.Contains(stderr.String(), "https://") {
		t.Errorf("stderr does not announce https: %s", stderr.String())
	}
	// Plain HTTP is not served.
	if r, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addr + "/mcp"); err == nil {
		r.Body.Close()
		if r.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP answered %d", r.StatusCode)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

// selfSigned writes a throwaway certificate for 127.0.0.1.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pyro test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
