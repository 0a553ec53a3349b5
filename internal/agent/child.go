package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// ChildArg is os.Args[1] of the agent server process that PID 1 starts by
// re-executing /proc/self/exe.
const ChildArg = "__pyro-agent"

// Environment variables PID 1 passes to the agent child.
const (
	envInitStarted = "PYRO_INIT_STARTED_MS"
	envRootReady   = "PYRO_ROOT_READY_MS"
	envLogLevel    = "PYRO_AGENT_LOG"
)

// portWait bounds the wait for the virtio-serial port to appear.
const portWait = 10 * time.Second

// RunChild is the guest agent server: it finds the virtio-serial port named
// agentapi.PortName, opens it and serves the agent API on it, reopening it
// whenever the host side disconnects. It never returns; on a fatal error it
// exits non-zero and PID 1 restarts it.
func RunChild() {
	started := uptimeMS()
	level := slog.LevelInfo
	if os.Getenv(envLogLevel) == "debug" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("component", "pyro-agent")
	opts := ServeOptions{
		Logger:         log,
		Shutdown:       func() { _ = unix.Kill(1, unix.SIGUSR2) },
		InitStartedMS:  envInt(envInitStarted),
		RootReadyMS:    envInt(envRootReady),
		AgentStartedMS: started,
	}
	if n := restoreSecrets(agentapi.SecretsDir); n > 0 {
		log.Info("secrets restored", "count", n)
	}
	dev, err := findPort(agentapi.PortName, portWait)
	if err != nil {
		log.Error("cannot find agent port", "err", err)
		os.Exit(1)
	}
	backoff := 10 * time.Millisecond
	for {
		// O_RDWR once per host connection: a second open is EBUSY. Reads
		// return EOF while no host is connected; then we reopen.
		f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			log.Error("open agent port", "dev", dev, "err", err)
			os.Exit(1)
		}
		t0 := time.Now()
		if err := Serve(context.Background(), f, opts); err != nil {
			log.Debug("agent session ended", "err", err)
		}
		// A session that carried traffic ends when the host disconnects;
		// reconnect at once. An immediate EOF means no host yet: back off.
		if time.Since(t0) > time.Second {
			backoff = 10 * time.Millisecond
		} else if backoff < 200*time.Millisecond {
			backoff *= 2
		}
		time.Sleep(backoff)
	}
}

// findPort returns /dev/<vportXpY> for the virtio-serial port with the given
// name, waiting up to wait for it to appear.
func findPort(name string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		matches, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, m := range matches {
			b, err := os.ReadFile(m)
			if err != nil || strings.TrimSpace(string(b)) != name {
				continue
			}
			dev := "/dev/" + filepath.Base(filepath.Dir(m))
			if _, err := os.Stat(dev); err == nil {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio-serial port named %q after %s", name, wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func envInt(key string) int64 {
	n, _ := strconv.ParseInt(os.Getenv(key), 10, 64)
	return n
}
