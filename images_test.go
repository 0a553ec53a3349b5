package pyro

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestImagePullPolicy(t *testing.T) {
	c, err := New(Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c.SetImagePulls(ImagePullsNone)
	_, err = c.CreateVM(ctx, CreateVMOptions{Environment: "localhost:1/team/img:v1"})
	if !errors.Is(err, ErrFailedPrecondition) || !strings.Contains(err.Error(), "--allow-pull") {
		t.Errorf("uncached image with pulls off: %v", err)
	}
	c.SetImagePulls(ImagePullsRegistryOnly)
	_, err = c.CreateWorkspace(ctx, CreateWorkspaceOptions{Environment: "docker-archive:/etc/passwd"})
	if !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("host archive with registry-only pulls: %v", err)
	}
	// With pulls allowed the reference is tried: an unreachable registry
	// is ErrUnavailable, fast.
	c.SetImagePulls(ImagePullsRegistryOnly)
	_, err = c.CreateVM(ctx, CreateVMOptions{Environment: "127.0.0.1:1/team/img:v1"})
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("unreachable registry: %v", err)
	}
	// A bare name:tag is a catalog name, with a hint towards references.
	_, err = c.CreateVM(ctx, CreateVMOptions{Environment: "python:3.12-slim"})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "docker.io/library/") {
		t.Errorf("catalog-looking name: %v", err)
	}
	if !IsImageReference("docker.io/library/python:3.12-slim") || IsImageReference("debian:12") {
		t.Error("IsImageReference")
	}
}
