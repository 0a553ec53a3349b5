package fakevmm

import (
	"os"
	"os/exec"
	"strconv"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// StartQEMUProcess starts a process that stands for dir's QEMU where a test
// needs one alive (instance.VMMPid): it carries dir.VMMName() on its command
// line, as QEMU does, and its pid goes to dir's vmm.pid. It runs nothing
// else (sleep). stop kills and reaps it.
func StartQEMUProcess(dir vmdir.Dir) (stop func(), err error) {
	path, err := exec.LookPath("sleep")
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{Path: path, Args: []string{dir.VMMName(), "3600"}}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop = func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	if err := os.WriteFile(dir.Path(vmdir.VMMPid), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}
