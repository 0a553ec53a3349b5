// Command hostcompat-probe is built static by e2e/hostcompat_test.go and run
// inside a host-compat sandbox to try what a hostile command would: reach
// the host through file handles, read and write host files, and exhaust
// processes and memory. It prints one line per attempt; the test judges.
package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hostcompat-probe escape|forks|mem ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "escape":
		escape(os.Args[2:])
	case "forks":
		n, _ := strconv.Atoi(os.Args[2])
		forks(n)
	case "mem":
		n, _ := strconv.Atoi(os.Args[2])
		mem(n)
	default:
		os.Exit(2)
	}
}

func report(step string, err error, detail string) {
	if err != nil {
		fmt.Printf("%s denied %v\n", step, err)
		return
	}
	fmt.Printf("%s ESCAPED %s\n", step, detail)
}

// escape args: handle (TYPE:HEX of the host directory holding the marker),
// the marker's name, a name to create next to it, the marker's host path.
func escape(args []string) {
	typ, hexBytes, _ := strings.Cut(args[0], ":")
	t, _ := strconv.Atoi(typ)
	b, _ := hex.DecodeString(hexBytes)
	marker, written, hostPath := args[1], args[2], args[3]

	// /proc/1/exe is the host's pyro binary: an fd on a host filesystem.
	mountFd, err := unix.Open("/proc/1/exe", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	report("open-proc1-exe", err, "")
	if err != nil {
		mountFd, _ = unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	dir, err := unix.OpenByHandleAt(mountFd, unix.NewFileHandle(int32(t), b), unix.O_RDONLY|unix.O_DIRECTORY)
	report("open-by-handle", err, "")
	if err == nil {
		f, err := unix.Openat(dir, marker, unix.O_RDONLY, 0)
		content := ""
		if err == nil {
			buf := make([]byte, 256)
			n, _ := unix.Read(f, buf)
			content = string(buf[:n])
		}
		report("read-host-marker-by-handle", err, content)
		f, err = unix.Openat(dir, written, unix.O_CREAT|unix.O_WRONLY, 0o644)
		if err == nil {
			_, err = unix.Write(f, []byte("escaped\n"))
		}
		report("write-host-file-by-handle", err, "")
	}
	// Straight at the host paths (they should not even exist here).
	c, err := os.ReadFile(hostPath)
	report("read-host-marker-by-path", err, string(c))
	err = os.WriteFile(filepath.Join(filepath.Dir(hostPath), written), []byte("escaped\n"), 0o644)
	report("write-host-file-by-path", err, "")
	_, err = unix.Open("/etc/shadow", unix.O_RDONLY, 0)
	fmt.Printf("sandbox-shadow %v\n", err) // the image's own: informative only
}

// forks starts up to n sleeping children, stops at the first failure, and
// prints how many it got.
func forks(n int) {
	var kids []*exec.Cmd
	var err error
	for len(kids) < n {
		c := exec.Command("/bin/sleep", "60")
		if err = c.Start(); err != nil {
			break
		}
		kids = append(kids, c)
	}
	fmt.Printf("forked %d err=%v\n", len(kids), err)
	for _, c := range kids {
		c.Process.Kill()
		c.Wait()
	}
}

// mem allocates and touches n MiB.
func mem(n int) {
	var keep [][]byte
	for i := 0; i < n; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		keep = append(keep, b)
	}
	fmt.Printf("allocated %d MiB\n", len(keep))
}
