package pyro_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/pyro-mcp/pyro"
)

// Run one command in a fresh microVM that is deleted afterwards.
func ExampleClient_RunInVM() {
	c, err := pyro.New(pyro.Options{})
	if err != nil {
		log.Fatal(err)
	}
	res, err := c.RunInVM(context.Background(), pyro.RunOptions{
		Environment: "debian:12",
		ExecOptions: pyro.ExecOptions{Command: []string{"python3", "-c", "print(6*7)"}},
	})
	if err != nil {
		log.Fatal(err) // pyro could not run it at all
	}
	fmt.Print(res.Stdout)                  // 42
	fmt.Println(res.ExitCode, res.Backend) // 0 qemu
}

// A VM that lives across calls, with a TTL as a safety net.
func ExampleClient_CreateVM() {
	ctx := context.Background()
	c, err := pyro.New(pyro.Options{})
	if err != nil {
		log.Fatal(err)
	}
	vm, err := c.CreateVM(ctx, pyro.CreateVMOptions{Environment: "debian:12", TTLSeconds: 600})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.StartVM(ctx, vm.VMID); err != nil {
		log.Fatal(err)
	}
	// ExecVM runs one command, then deletes the VM.
	res, err := c.ExecVM(ctx, vm.VMID, pyro.ExecOptions{Command: []string{"uname -r"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)
}

// A persistent workspace: seed, exec, diff, snapshot, reset, export, delete.
func ExampleClient_CreateWorkspace() {
	ctx := context.Background()
	c, err := pyro.New(pyro.Options{})
	if err != nil {
		log.Fatal(err)
	}
	ws, err := c.CreateWorkspace(ctx, pyro.CreateWorkspaceOptions{SeedPath: "./myproject"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteWorkspace(ctx, ws.WorkspaceID)

	res, _ := c.ExecWorkspace(ctx, ws.WorkspaceID, pyro.ExecOptions{Command: []string{"make test > report.txt"}})
	fmt.Println("tests exited", res.ExitCode)
	diff, _ := c.DiffWorkspace(ctx, ws.WorkspaceID)
	fmt.Println("added:", diff.Added)
	c.CreateSnapshot(ctx, ws.WorkspaceID, "after-tests")
	c.ExportWorkspace(ctx, ws.WorkspaceID, "report.txt", "./report.txt", nil)
	c.ResetWorkspace(ctx, ws.WorkspaceID, "baseline")
}

// A dev server with a readiness probe, and an interactive shell.
func ExampleClient_StartService() {
	ctx := context.Background()
	c, _ := pyro.New(pyro.Options{})
	ws, err := c.CreateWorkspace(ctx, pyro.CreateWorkspaceOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteWorkspace(ctx, ws.WorkspaceID)
	svc, err := c.StartService(ctx, ws.WorkspaceID, "web", pyro.StartServiceOptions{
		Command:   []string{"python3", "-m", "http.server", "8000"},
		Readiness: &pyro.Readiness{Type: "http", URL: "http://127.0.0.1:8000/"},
	})
	if err != nil {
		log.Fatal(err) // the probe's last error and the service's last log lines
	}
	fmt.Println(svc.State) // ready

	sh, _ := c.OpenShell(ctx, ws.WorkspaceID, nil)
	c.WriteShell(ctx, ws.WorkspaceID, sh.ShellID, "curl -s localhost:8000 | head -3", nil)
	out, _ := c.ReadShell(ctx, ws.WorkspaceID, sh.ShellID, nil)
	os.Stdout.WriteString(out.Output) // follow out.NextCursor on the next read
}
