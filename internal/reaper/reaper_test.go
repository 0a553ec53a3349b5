package reaper

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestReapCollectsExitedChildren(t *testing.T) {
	want := map[int]string{}
	for _, code := range []string{"exit 3", "kill -TERM $$"} {
		p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", code}, &os.ProcAttr{})
		if err != nil {
			t.Fatal(err)
		}
		want[p.Pid] = map[string]string{"exit 3": "exit code 3", "kill -TERM $$": "signal SIGTERM"}[code]
		_ = p.Release()
	}
	got := map[int]string{}
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < len(want) && time.Now().Before(deadline) {
		Reap(func(pid int, ws unix.WaitStatus) { got[pid] = Describe(ws) })
		time.Sleep(5 * time.Millisecond)
	}
	for pid, w := range want {
		if got[pid] != w {
			t.Errorf("pid %d: got %q, want %q", pid, got[pid], w)
		}
	}
}
