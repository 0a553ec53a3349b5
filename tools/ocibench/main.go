// Command ocibench measures `pyro env pull IMAGE` (download, layer
// application, mke2fs, install) for an image of about 200 MiB served by an
// in-process registry on loopback, against `docker pull` of the same image
// from the same registry when a Docker daemon answers. The image is the
// cached debian:12 root filesystem (read with debugfs, no mount) as one
// gzip layer plus a layer of incompressible data, so that the image is about
// 200 MiB unpacked.
//
//	go run ./tools/ocibench -pyro bin/pyro [-runs 3]
//
// Each pyro run uses a fresh PYRO_HOME (kernel cache shared), so every run
// converts; each docker run removes the image first.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

func main() {
	pyroBin := flag.String("pyro", "bin/pyro", "pyro binary")
	env := flag.String("env", "debian_12", "cached environment directory whose rootfs.ext4 is the base layer")
	runs := flag.Int("runs", 3, "runs per tool")
	extraMiB := flag.Int("extra-mib", 64, "MiB of incompressible data in a second layer")
	flag.Parse()
	if err := run(*pyroBin, *env, *runs, *extraMiB); err != nil {
		fmt.Fprintln(os.Stderr, "ocibench:", err)
		os.Exit(1)
	}
}

func run(pyroBin, env string, runs, extraMiB int) error {
	bin, err := filepath.Abs(pyroBin)
	if err != nil {
		return err
	}
	state := statedir.Root()
	rootfs := filepath.Join(state, "environments", env, "1.0.0", "rootfs.ext4")
	work, err := os.MkdirTemp("", "ocibench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go http.Serve(ln, registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	port := ln.Addr().(*net.TCPAddr).Port
	ref := fmt.Sprintf("localhost:%d/bench/debian:v1", port)

	fmt.Printf("building the image from %s ...\n", rootfs)
	root := filepath.Join(work, "root")
	os.Mkdir(root, 0o755)
	if out, err := exec.Command("debugfs", "-R", "rdump / "+root, rootfs).CombinedOutput(); err != nil {
		return fmt.Errorf("debugfs: %v: %s", err, out)
	}
	var base bytes.Buffer
	if _, _, err := tarutil.TarDir(&base, root); err != nil {
		return err
	}
	os.RemoveAll(root)
	layers := []v1.Layer{layerOf(base.Bytes())}
	if extraMiB > 0 {
		var extra bytes.Buffer
		tarFile(&extra, "opt/blob.bin", extraMiB<<20)
		layers = append(layers, layerOf(extra.Bytes()))
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return err
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		return err
	}
	var comp, uncomp int64
	ls, _ := img.Layers()
	for _, l := range ls {
		n, _ := l.Size()
		comp += n
	}
	uncomp = int64(base.Len()) + int64(extraMiB)<<20
	fmt.Printf("image %s: %d layers, %.0f MiB compressed, %.0f MiB unpacked\n", ref, len(ls), float64(comp)/(1<<20), float64(uncomp)/(1<<20))

	var pyroTimes, dockerTimes []time.Duration
	for i := 0; i < runs; i++ {
		home := filepath.Join(work, fmt.Sprintf("home%d", i))
		os.MkdirAll(home, 0o755)
		os.Symlink(filepath.Join(state, "cache"), filepath.Join(home, "cache"))
		start := time.Now()
		// Human mode, stderr not a terminal: one line per phase, timed
		// here to show where the time goes.
		cmd := exec.Command(bin, "env", "pull", ref)
		cmd.Env = append(os.Environ(), "PYRO_HOME="+home)
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			return err
		}
		sc := bufio.NewScanner(stderr)
		var phases []string
		for sc.Scan() {
			phases = append(phases, fmt.Sprintf("  %6.2f s  %s", time.Since(start).Seconds(), sc.Text()))
		}
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("pyro env pull: %v: %s", err, strings.Join(phases, "\n"))
		}
		pyroTimes = append(pyroTimes, time.Since(start))
		if i == 0 {
			fmt.Println(strings.Join(phases, "\n"))
		}
		os.RemoveAll(home)
		fmt.Printf("pyro env pull run %d: %.2f s\n", i+1, pyroTimes[i].Seconds())
	}
	// The cached case: a second pull of an installed digest.
	home := filepath.Join(work, "cached")
	os.MkdirAll(home, 0o755)
	os.Symlink(filepath.Join(state, "cache"), filepath.Join(home, "cache"))
	for j := 0; j < 2; j++ {
		start := time.Now()
		cmd := exec.Command(bin, "env", "pull", "--json", ref)
		cmd.Env = append(os.Environ(), "PYRO_HOME="+home)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("pyro env pull: %v: %s", err, out)
		}
		if j == 1 {
			fmt.Printf("pyro env pull, already cached: %.2f s\n", time.Since(start).Seconds())
		}
	}

	docker, derr := exec.LookPath("docker")
	if derr == nil {
		derr = exec.Command(docker, "info").Run()
	}
	if derr != nil {
		fmt.Printf("docker: not available (%v): no side-by-side figure\n", derr)
	} else {
		for i := 0; i < runs; i++ {
			_ = exec.Command(docker, "rmi", "-f", ref).Run()
			start := time.Now()
			if out, err := exec.Command(docker, "pull", "-q", ref).CombinedOutput(); err != nil {
				return fmt.Errorf("docker pull: %v: %s", err, out)
			}
			dockerTimes = append(dockerTimes, time.Since(start))
			fmt.Printf("docker pull run %d: %.2f s\n", i+1, dockerTimes[i].Seconds())
		}
		_ = exec.Command(docker, "rmi", "-f", ref).Run()
	}
	p := median(pyroTimes)
	fmt.Printf("\nmedian pyro env pull (download + unpack + mke2fs + install): %.2f s\n", p.Seconds())
	if len(dockerTimes) > 0 {
		d := median(dockerTimes)
		fmt.Printf("median docker pull (download + unpack):                      %.2f s\nratio pyro/docker: %.2f\n", d.Seconds(), p.Seconds()/d.Seconds())
	}
	return nil
}

func layerOf(b []byte) v1.Layer {
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		panic(err)
	}
	return l
}

func tarFile(w io.Writer, name string, size int) {
	data := make([]byte, size)
	rand.Read(data)
	tw := tar.NewWriter(w)
	tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size), ModTime: time.Now()})
	tw.Write(data)
	tw.Close()
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
