package workspace

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestAwaitBaseReturnsWhenBuilt(t *testing.T) {
	img := filepath.Join(t.TempDir(), BaseFile)
	if err := PrepareBase(img, 1<<20); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(img); err != nil || fi.Size() != 1<<20 {
		t.Fatalf("prepared image: %v %v", fi, err)
	}
	if !BasePending(img) {
		t.Fatal("a prepared image is not pending")
	}
	// PrepareBase never replaces an image.
	if err := PrepareBase(img, 1<<20); err == nil {
		t.Fatal("PrepareBase over an existing image succeeded")
	}
	done := make(chan error, 1)
	go func() { done <- AwaitBase(context.Background(), img, func() bool { return true }) }()
	select {
	case err := <-done:
		t.Fatalf("returned before the build ended: %v", err)
	case <-time.After(30 * time.Millisecond):
	}
	if err := os.Remove(pendingPath(img)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still waiting after the build ended")
	}
}

func TestAwaitBaseFailsWhenBuilderDies(t *testing.T) {
	img := filepath.Join(t.TempDir(), BaseFile)
	if err := PrepareBase(img, 1<<20); err != nil {
		t.Fatal(err)
	}
	var alive atomic.Bool
	alive.Store(true)
	done := make(chan error, 1)
	go func() { done <- AwaitBase(context.Background(), img, alive.Load) }()
	time.Sleep(20 * time.Millisecond)
	alive.Store(false)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "gone") {
			t.Fatalf("err %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still waiting for a dead builder")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := AwaitBase(ctx, img, func() bool { return true }); err == nil {
		t.Fatal("AwaitBase with an ended context succeeded")
	}
}
