package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sdk "github.com/pyro-mcp/pyro"
)

// sdkClient returns a Go SDK client on an isolated state dir that shares
// the installed environments.
func sdkClient(t *testing.T) (*sdk.Client, context.Context) {
	t.Helper()
	home, _ := isolatedHome(t)
	// Whatever a failing test leaves running (its QEMU, its supervisor)
	// goes when it ends.
	killHomeOnCleanup(t, home)
	c, err := sdk.New(sdk.Options{StateDir: home, Binary: pyroBin})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return c, ctx
}

func TestSDKEnvironmentsAndRun(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	c, ctx := sdkClient(t)
	envs, err := c.ListEnvironments(ctx)
	if err != nil || len(envs) != 3 {
		t.Fatalf("ListEnvironments: %v %d", err, len(envs))
	}
	e, err := c.InspectEnvironment(ctx, baseEnv)
	if err != nil || !e.Installed || e.Manifest == nil {
		t.Fatalf("InspectEnvironment: %+v %v", e, err)
	}
	if _, err := c.InspectEnvironment(ctx, "nope:1"); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("unknown environment: %v", err)
	}
	p, err := c.PullEnvironment(ctx, baseEnv, sdk.PullOptions{})
	if err != nil || !p.AlreadyInstalled {
		t.Fatalf("PullEnvironment: %+v %v", p, err)
	}
	if _, err := c.PruneEnvironments(ctx); err != nil {
		t.Fatal(err)
	}
	var streamed strings.Builder
	r, err := c.RunInVM(ctx, sdk.RunOptions{Environment: baseEnv, ExecOptions: sdk.ExecOptions{Command: []string{"echo hi; exit 5"},
		OnOutput: func(_ string, p []byte) { streamed.Write(p) }}})
	if err != nil || r.ExitCode != 5 || r.Stdout != "hi\n" || streamed.String() != "hi\n" || r.VCPUCount != 1 || r.MemMiB != 1024 {
		t.Fatalf("RunInVM: %+v %v (streamed %q)", r, err, streamed.String())
	}
	if _, err := c.RunInVM(ctx, sdk.RunOptions{Environment: baseEnv}); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("RunInVM without a command: %v", err)
	}
}

func TestSDKVMLifecycle(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	c, ctx := sdkClient(t)
	v, err := c.CreateVM(ctx, sdk.CreateVMOptions{Environment: baseEnv, Network: true})
	if err != nil || v.State != "created" || v.VCPUCount != 1 || v.MemMiB != 1024 || v.AllowHostCompat {
		t.Fatalf("CreateVM defaults: %+v %v", v, err)
	}
	n, err := c.NetworkInfoVM(ctx, v.VMID)
	if err != nil || !n.Enabled || n.GuestIP != "10.0.2.15" || n.Gateway != "10.0.2.2" || n.MAC == "" {
		t.Fatalf("NetworkInfoVM: %+v %v", n, err)
	}
	if _, err := c.ExecVM(ctx, v.VMID, sdk.ExecOptions{Command: []string{"true"}}); !errors.Is(err, sdk.ErrFailedPrecondition) {
		t.Fatalf("exec on a created VM: %v", err)
	}
	if v, err = c.StartVM(ctx, v.VMID); err != nil || v.State != "running" {
		t.Fatalf("StartVM: %+v %v", v, err)
	}
	// The guest's NIC has the MAC the SDK reports.
	agentMAC := ""
	if s, err := c.StatusVM(ctx, v.VMID); err != nil || s.State != "running" {
		t.Fatalf("StatusVM: %+v %v", s, err)
	}
	list, _ := c.ListVMs(ctx)
	if len(list) != 1 || list[0].VMID != v.VMID {
		t.Fatalf("ListVMs: %+v", list)
	}
	if v, err = c.StopVM(ctx, v.VMID); err != nil || v.State != "stopped" {
		t.Fatalf("StopVM: %+v %v", v, err)
	}
	if v, err = c.StartVM(ctx, v.VMID); err != nil || v.State != "running" {
		t.Fatalf("restart: %+v %v", v, err)
	}
	res, err := c.ExecVM(ctx, v.VMID, sdk.ExecOptions{Command: []string{"cat", "/sys/class/net/eth0/address"}})
	if err == nil {
		agentMAC = strings.TrimSpace(res.Stdout)
	}
	if err != nil || agentMAC != n.MAC {
		t.Fatalf("ExecVM: %+v %v (want MAC %s)", res, err, n.MAC)
	}
	if _, err := c.StatusVM(ctx, v.VMID); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("ExecVM did not auto-clean: %v", err)
	}
	if _, err := c.DeleteVM(ctx, v.VMID); !errors.Is(err, sdk.ErrNotFound) || !strings.Contains(err.Error(), v.VMID) {
		t.Fatalf("delete of a deleted VM: %v", err)
	}
	// TTL and reaping through the SDK.
	v, err = c.CreateVM(ctx, sdk.CreateVMOptions{Environment: baseEnv, TTLSeconds: 1})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond)
	if s, _ := c.StatusVM(ctx, v.VMID); s.State != "expired" {
		t.Fatalf("after ttl: %+v", s)
	}
	reaped, err := c.ReapExpired(ctx)
	if err != nil || reaped.Count != 1 || reaped.Removed[0].VMID != v.VMID {
		t.Fatalf("ReapExpired: %+v %v", reaped, err)
	}
}

func TestSDKWorkspace(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	c, ctx := sdkClient(t)
	seed := t.TempDir()
	writeTree(t, seed, map[string]string{"a.txt": "a\n"})
	w, err := c.CreateWorkspace(ctx, sdk.CreateWorkspaceOptions{Environment: baseEnv, SeedPath: seed})
	if id := w.WorkspaceID; id != "" {
		// Deleted also when a check below fails (it left QEMU running).
		t.Cleanup(func() { _, _ = c.DeleteWorkspace(context.Background(), id) })
	}
	if err != nil || w.WorkspaceSeed.FileCount != 1 || w.Secrets == nil {
		t.Fatalf("CreateWorkspace: %+v %v", w, err)
	}
	id := w.WorkspaceID
	if r, err := c.ExecWorkspace(ctx, id, sdk.ExecOptions{Command: []string{"echo b > b.txt; cat a.txt"}}); err != nil || r.Stdout != "a\n" || r.WorkspaceID != id {
		t.Fatalf("ExecWorkspace: %+v %v", r, err)
	}
	d, err := c.DiffWorkspace(ctx, id)
	if err != nil || len(d.Added) != 1 || d.Added[0] != "b.txt" {
		t.Fatalf("DiffWorkspace: %+v %v", d, err)
	}
	if _, err := c.CreateSnapshot(ctx, id, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSnapshot(ctx, id, "s1"); !errors.Is(err, sdk.ErrAlreadyExists) {
		t.Fatalf("duplicate snapshot: %v", err)
	}
	snaps, _ := c.ListSnapshots(ctx, id)
	if len(snaps) != 2 {
		t.Fatalf("ListSnapshots: %+v", snaps)
	}
	if err := c.DeleteSnapshot(ctx, id, "baseline"); !errors.Is(err, sdk.ErrFailedPrecondition) {
		t.Fatalf("delete baseline: %v", err)
	}
	src := t.TempDir()
	writeTree(t, src, map[string]string{"c.txt": "c\n"})
	if r, err := c.PushWorkspaceSync(ctx, id, src, "/workspace/in"); err != nil || r.FileCount != 1 {
		t.Fatalf("PushWorkspaceSync: %+v %v", r, err)
	}
	out := filepath.Join(t.TempDir(), "in")
	if _, err := c.ExportWorkspace(ctx, id, "in", out, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "c.txt")); string(b) != "c\n" {
		t.Fatalf("export: %q", b)
	}
	svc, err := c.StartService(ctx, id, "marker", sdk.StartServiceOptions{Command: []string{"sh -c 'touch /tmp/up; sleep 1000'"},
		Readiness: &sdk.Readiness{Type: "file", Path: "/tmp/up"}, ReadyIntervalMS: 100})
	if err != nil || svc.State != "running" || svc.ReadyAt == nil {
		t.Fatalf("StartService: %+v %v", svc, err)
	}
	sh, err := c.OpenShell(ctx, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteShell(ctx, id, sh.ShellID, "echo from-shell", nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := c.ReadShell(ctx, id, sh.ShellID, nil)
		if err == nil && strings.Contains(r.Output, "from-shell\r\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ReadShell: %+v %v", r, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	st, err := c.StatusWorkspace(ctx, id)
	if err != nil || st.ServiceCount != 1 || st.RunningServiceCount != 1 || st.CommandCount != 1 {
		t.Fatalf("StatusWorkspace: %+v %v", st, err)
	}
	w, err = c.ResetWorkspace(ctx, id, "s1")
	if err != nil || w.ResetCount != 1 || w.ServiceCount != 0 {
		t.Fatalf("ResetWorkspace: %+v %v", w, err)
	}
	if _, err := c.ReadShell(ctx, id, sh.ShellID, nil); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("shell after reset: %v", err)
	}
	if h, _ := c.LogsWorkspace(ctx, id); len(h) != 0 {
		t.Fatalf("history after reset: %+v", h)
	}
	if _, err := c.DeleteWorkspace(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StatusWorkspace(ctx, id); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("status after delete: %v", err)
	}
}
