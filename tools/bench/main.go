// Command bench compares `pyro run ENV -- true` with a bare QEMU boot of the
// same kernel, initramfs and root image to power-off (the guest's init sets
// everything up, then powers off: no agent, no exec), and prints the medians
// side by side with their ratio. Run it with `make bench`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/initramfs"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
)

func main() {
	pyroBin := flag.String("pyro", "bin/pyro", "pyro binary")
	envName := flag.String("env", "debian:12-base", "environment")
	n := flag.Int("n", 10, "iterations of each")
	flag.Parse()
	if err := run(*pyroBin, *envName, *n); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(pyroBin, envName string, n int) error {
	pyroBin, _ = filepath.Abs(pyroBin)
	dirs := statedir.Dirs{Root: statedir.Root()}
	inst, err := envstore.New(dirs.Environments(), dirs.Cache()).Get(envName)
	if err != nil {
		return err
	}
	initrd, err := initramfs.Build(dirs.Cache(), pyroBin, inst.ModulePaths())
	if err != nil {
		return err
	}
	qbin, err := qemu.Binary()
	if err != nil {
		return err
	}
	ctx := context.Background()
	accel := "tcg"
	if qemu.ProbeKVM(ctx, dirs.Cache(), qbin, vmm.Spec{Kernel: inst.KernelPath(), Initrd: initrd, RootDisk: inst.RootfsPath()}).Usable {
		accel = "kvm"
	}
	tmp, err := os.MkdirTemp("", "pyro-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	spec := vmm.Spec{Dir: vmdir.Dir(tmp), Kernel: inst.KernelPath(), Initrd: initrd, RootDisk: inst.RootfsPath(),
		VCPUs: 1, MemMiB: 1024, Cmdline: []string{"pyro.poweroff=1"}}
	bare := exec.Command(qbin, qemu.New(qbin, accel).Args(spec)...)

	var tPyro, tBare []time.Duration
	// Warm-up: caches (initramfs, KVM verdict, page cache) are not the subject.
	if out, err := exec.Command(pyroBin, "run", envName, "--", "true").CombinedOutput(); err != nil {
		return fmt.Errorf("warm-up pyro run: %v: %s", err, out)
	}
	for i := 0; i < n; i++ {
		// Interleave the two so drift on the host hits both alike.
		start := time.Now()
		if out, err := exec.Command(pyroBin, "run", envName, "--", "true").CombinedOutput(); err != nil {
			return fmt.Errorf("pyro run: %v: %s", err, out)
		}
		tPyro = append(tPyro, time.Since(start))

		c := exec.Command(bare.Path, bare.Args[1:]...)
		c.Dir = tmp
		start = time.Now()
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("bare qemu: %v: %s", err, out)
		}
		tBare = append(tBare, time.Since(start))
	}
	mp, mb := median(tPyro), median(tBare)
	fmt.Printf("accel %s, %d runs each, environment %s\n", accel, n, envName)
	fmt.Printf("%-40s median %7.0f ms  (min %4.0f, max %4.0f)\n", "pyro run "+envName+" -- true", ms(mp), ms(slices.Min(tPyro)), ms(slices.Max(tPyro)))
	fmt.Printf("%-40s median %7.0f ms  (min %4.0f, max %4.0f)\n", "bare qemu boot to power-off", ms(mb), ms(slices.Min(tBare)), ms(slices.Max(tBare)))
	fmt.Printf("ratio pyro/bare: %.3f (goal <= 1.10)\n", float64(mp)/float64(mb))
	return nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
