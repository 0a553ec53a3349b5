package agent

import (
	"context"
	"log/slog"
	"os"
	"strconv"
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
	// envSnapshot=1: the guest may be saved as a memory snapshot
	// (pyro.snapshot=1): reconnect to a new host at once.
	envSnapshot = "PYRO_SNAPSHOT"
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
	userCgroup := ""
	if st, err := os.Stat(UserCgroupDir); err == nil && st.IsDir() {
		userCgroup = UserCgroupDir
	} else {
		log.Warn("no user cgroup: commands run without pids and memory limits", "dir", UserCgroupDir)
	}
	img := LoadImageDefaults(agentapi.ImageConfigPath, "/")
	if img.Refuse != nil {
		// The guest still boots and answers; its commands fail saying why.
		log.Error("image config unusable: user commands are refused", "err", img.Refuse)
	}
	if img.Credential != nil && img.Credential.Uid != 0 {
		// The user's commands must be able to write the workspace.
		if st, err := os.Stat(WorkspaceDir); err == nil && st.IsDir() {
			_ = os.Chown(WorkspaceDir, int(img.Credential.Uid), int(img.Credential.Gid))
		}
	}
	a := New(Options{
		Env:            img.Env,
		Credential:     img.Credential,
		RefuseCommands: img.Refuse,
		DefaultCwd:     img.Cwd,
		UserCgroup:     userCgroup,
		Logger:         log,
		Shutdown:       func() { _ = unix.Kill(1, unix.SIGUSR2) },
		InitStartedMS:  envInt(envInitStarted),
		RootReadyMS:    envInt(envRootReady),
		AgentStartedMS: started,
	})
	if n := a.RestoreSecrets(); n > 0 {
		log.Info("secrets restored", "count", n)
	}
	snapshot := os.Getenv(envSnapshot) == "1"
	if snapshot {
		prewarm()
		a.kept = openKeptFiles(hostsPath, machineIDPath)
	}
	ln, err := SerialListener(agentapi.PortName, portWait, snapshot)
	if err != nil {
		log.Error("cannot find agent port", "err", err)
		os.Exit(1)
	}
	err = a.ServeListener(context.Background(), ln)
	log.Error("agent listener failed", "err", err)
	os.Exit(1)
}

func envInt(key string) int64 {
	n, _ := strconv.ParseInt(os.Getenv(key), 10, 64)
	return n
}
