package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/initramfs"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
)

// benchBoot compares `pyro run ENV -- true` with a bare QEMU boot of the
// same kernel, initramfs and root image to power-off (the guest's init sets
// everything up, then powers off: no agent, no exec).
func benchBoot(ctx context.Context, cfg *config) ([]row, error) {
	dirs := statedir.Dirs{Root: cfg.client.StateDir()}
	inst, err := envstore.New(dirs.Environments(), dirs.Cache()).Get(cfg.env)
	if err != nil {
		return nil, err
	}
	initrd, err := initramfs.Build(dirs.Cache(), cfg.pyroBin, inst.ModulePaths())
	if err != nil {
		return nil, err
	}
	qbin, err := qemu.Binary()
	if err != nil {
		return nil, err
	}
	accel := "tcg"
	if qemu.ProbeKVM(ctx, dirs.Cache(), qbin, vmm.Spec{Kernel: inst.KernelPath(), Initrd: initrd, RootDisk: inst.RootfsPath()}).Usable {
		accel = "kvm"
	}
	tmp, err := os.MkdirTemp("", "pyro-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	spec := vmm.Spec{Dir: vmdir.Dir(tmp), Kernel: inst.KernelPath(), Initrd: initrd, RootDisk: inst.RootfsPath(),
		VCPUs: 1, MemMiB: 1024, Cmdline: []string{"pyro.poweroff=1"}}
	bare := qemu.New(qbin, accel)

	pyroRun := func() error {
		if out, err := command(ctx, cfg.pyroBin, "run", cfg.env, "--", "true").CombinedOutput(); err != nil {
			return fmt.Errorf("pyro run: %v: %s", err, out)
		}
		return nil
	}
	// Warm-up: caches (initramfs, KVM verdict, page cache) are not the subject.
	if err := pyroRun(); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	var tPyro, tBare []time.Duration
	for i := 0; i < cfg.bootN; i++ {
		// Interleave the two so drift on the host hits both alike.
		start := time.Now()
		if err := pyroRun(); err != nil {
			return nil, err
		}
		tPyro = append(tPyro, time.Since(start))

		// The same command line and descriptors pyro hands QEMU, without
		// pyro's supervisor and agent around it.
		c, cleanup, err := bare.Command(spec, io.Discard)
		if err != nil {
			return nil, err
		}
		var stderr bytes.Buffer
		c.Stderr = &stderr
		start = time.Now()
		err = c.Run()
		cleanup()
		if err != nil {
			return nil, fmt.Errorf("bare qemu: %v: %s", err, stderr.Bytes())
		}
		tBare = append(tBare, time.Since(start))
	}
	mp, mb := median(tPyro), median(tBare)
	return []row{
		msRow(fmt.Sprintf("pyro run %s -- true (%s)", cfg.env, accel), tPyro),
		msRow("bare qemu boot to power-off", tBare),
		{name: "ratio pyro run / bare boot", value: float64(mp) / float64(mb), unit: "x", goal: 1.10, goalText: "<= 1.10x"},
	}, nil
}
