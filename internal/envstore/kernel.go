package envstore

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// NeededModules are the modules the guest loads (with their dependencies):
// virtio transport, block, console, network and overlayfs.
var NeededModules = []string{
	"virtio", "virtio_ring", "virtio_mmio",
	"virtio_blk", "virtio_console",
	"failover", "net_failover", "virtio_net",
	"overlay",
}

// kernelMetaPackage depends on the current cloud kernel image.
const kernelMetaPackage = "linux-image-cloud-amd64"

const kernelMetaFile = "kernel.json"

// kernelCache is the record kept with an extracted kernel in the cache.
type kernelCache struct {
	Kernel         KernelInfo          `json:"kernel"`
	Modules        []string            `json:"modules"`
	BuiltinModules []string            `json:"builtin_modules"`
	Files          map[string]FileInfo `json:"files"`
}

var kernelPkgRE = lazyRegexp(`^linux-image-[0-9][^ ]*-cloud-amd64(-unsigned)?$`)

// resolveKernelPackage asks apt (the host's package lists) for the newest
// cloud kernel: the unsigned image package the meta package points at.
func resolveKernelPackage(ctx context.Context) (name, version string, err error) {
	out, err := runTool(ctx, command{name: "apt-cache", args: []string{"depends", kernelMetaPackage}})
	if err != nil {
		return "", "", errdefs.Wrap(errdefs.ErrUnavailable, err, "run `apt-get update` on the host", "find the Debian cloud kernel package")
	}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || strings.TrimSpace(k) != "Depends" {
			continue
		}
		if p := strings.TrimSpace(v); kernelPkgRE().MatchString(p) {
			name = p
			break
		}
	}
	if name == "" {
		return "", "", errdefs.New(errdefs.ErrUnavailable, "run `apt-get update` on the host", "%s depends on no kernel image package", kernelMetaPackage)
	}
	if !strings.HasSuffix(name, "-unsigned") {
		name += "-unsigned"
	}
	out, err = runTool(ctx, command{name: "apt-cache", args: []string{"show", "--no-all-versions", name}})
	if err != nil {
		return "", "", errdefs.Wrap(errdefs.ErrUnavailable, err, "run `apt-get update` on the host", "look up kernel package %q", name)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version:"); ok {
			version = strings.TrimSpace(v)
			break
		}
	}
	if version == "" {
		return "", "", fmt.Errorf("apt-cache shows no version of %q", name)
	}
	return name, version, nil
}

var unsafeVersionChars = lazyRegexp(`[^0-9A-Za-z.+~-]`)

func (s *Store) kernelsDir() string { return filepath.Join(s.cacheDir, "kernels") }

// kernelCacheKey turns a package version into a directory name.
func kernelCacheKey(version string) string {
	return unsafeVersionChars().ReplaceAllString(version, "_")
}

// ensureKernel returns the cache directory holding the extracted kernel of
// the current cloud kernel package, extracting it first if needed. Call with
// the store lock held.
func (s *Store) ensureKernel(ctx context.Context, emit func(Event)) (string, kernelCache, error) {
	emit(Event{Phase: "kernel", Message: "resolving kernel package"})
	pkg, version, err := resolveKernelPackage(ctx)
	if err != nil {
		return "", kernelCache{}, err
	}
	dir := filepath.Join(s.kernelsDir(), kernelCacheKey(version))
	if kc, err := readKernelCache(dir); err == nil && kc.Kernel.Package == pkg && kc.Kernel.Version == version {
		if reason := checkFiles(dir, kc.Files, true); reason == "" {
			emit(Event{Phase: "kernel", Message: "using cached " + pkg + " " + version})
			return dir, kc, nil
		} else {
			s.log.Info("kernel cache damaged, extracting again", "dir", dir, "reason", reason)
		}
	}
	if err := os.MkdirAll(s.kernelsDir(), 0o755); err != nil {
		return "", kernelCache{}, err
	}
	tmp, err := os.MkdirTemp(s.kernelsDir(), tmpPrefix)
	if err != nil {
		return "", kernelCache{}, err
	}
	defer removeTree(tmp)

	emit(Event{Phase: "kernel", Message: "downloading " + pkg + " " + version})
	dl := filepath.Join(tmp, "dl")
	if err := os.Mkdir(dl, 0o755); err != nil {
		return "", kernelCache{}, err
	}
	if _, err := runTool(ctx, command{name: "apt-get", dir: dl, args: []string{
		"-q", "-o", "APT::Sandbox::User=root", "download", pkg + "=" + version,
	}}); err != nil {
		return "", kernelCache{}, errdefs.Wrap(errdefs.ErrUnavailable, err, "check the network and `apt-get update`", "download kernel package %q", pkg)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return "", kernelCache{}, fmt.Errorf("download kernel package %q: got %d .deb files", pkg, len(debs))
	}
	emit(Event{Phase: "kernel", Message: "extracting " + filepath.Base(debs[0])})
	x := filepath.Join(tmp, "x")
	if _, err := runTool(ctx, command{name: "dpkg-deb", args: []string{"-x", debs[0], x}}); err != nil {
		return "", kernelCache{}, err
	}
	out := filepath.Join(tmp, "out")
	kc, err := extractKernel(ctx, x, out)
	if err != nil {
		return "", kernelCache{}, fmt.Errorf("extract kernel from %q: %w", pkg, err)
	}
	kc.Kernel.Package = pkg
	kc.Kernel.Version = version
	if kc.Files, err = hashTree(out, nil); err != nil {
		return "", kernelCache{}, err
	}
	b, _ := json.MarshalIndent(kc, "", "  ")
	if err := fsutil.WriteFileAtomic(filepath.Join(out, kernelMetaFile), append(b, '\n'), 0o644); err != nil {
		return "", kernelCache{}, err
	}
	delete(kc.Files, kernelMetaFile)
	if err := removeTree(dir); err != nil {
		return "", kernelCache{}, err
	}
	if err := os.Rename(out, dir); err != nil {
		return "", kernelCache{}, err
	}
	s.log.Info("extracted kernel", "package", pkg, "version", version, "release", kc.Kernel.Release, "modules", len(kc.Modules), "builtin", kc.BuiltinModules)
	return dir, kc, nil
}

func readKernelCache(dir string) (kernelCache, error) {
	var kc kernelCache
	b, err := os.ReadFile(filepath.Join(dir, kernelMetaFile))
	if err != nil {
		return kc, err
	}
	if err := json.Unmarshal(b, &kc); err != nil {
		return kc, err
	}
	delete(kc.Files, kernelMetaFile)
	return kc, nil
}

// extractKernel writes vmlinux and modules/<name>.ko for NeededModules and
// their dependencies from an unpacked kernel package x into out.
func extractKernel(ctx context.Context, x, out string) (kernelCache, error) {
	var kc kernelCache
	rels, _ := filepath.Glob(filepath.Join(x, "lib", "modules", "*"))
	if len(rels) != 1 {
		return kc, fmt.Errorf("package holds %d module trees, want 1", len(rels))
	}
	modRoot := rels[0]
	kc.Kernel.Release = filepath.Base(modRoot)
	if err := os.MkdirAll(filepath.Join(out, ModulesDir), 0o755); err != nil {
		return kc, err
	}

	bz, err := os.ReadFile(filepath.Join(x, "boot", "vmlinuz-"+kc.Kernel.Release))
	if err != nil {
		return kc, err
	}
	payload, err := bzImagePayload(bz)
	if err != nil {
		return kc, err
	}
	if !isLZ4(payload) {
		return kc, fmt.Errorf("bzImage payload is not LZ4 (starts % x)", payload[:min(4, len(payload))])
	}
	// The kernel's build appends the decompressed size (uint32 LE) to the
	// payload; lz4 rejects it as a bad frame, so it is cut off and checked.
	stream, wantSize := splitSizeTrailer(payload)
	vmlinux := filepath.Join(out, "vmlinux")
	f, err := os.Create(vmlinux)
	if err != nil {
		return kc, err
	}
	_, err = runTool(ctx, command{name: "lz4", args: []string{"-dc"}, stdin: bytes.NewReader(stream), stdout: f})
	var size int64
	if st, serr := f.Stat(); serr == nil {
		size = st.Size()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return kc, fmt.Errorf("decompress kernel: %w", err)
	}
	if size != wantSize {
		return kc, fmt.Errorf("decompressed kernel has %d bytes, the bzImage says %d", size, wantSize)
	}
	if err := checkVmlinux(vmlinux); err != nil {
		return kc, err
	}

	// Index the shipped modules by canonical name.
	index := map[string]string{}
	err = filepath.WalkDir(filepath.Join(modRoot, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if n, ok := moduleName(d.Name()); ok {
			index[n] = p
		}
		return nil
	})
	if err != nil {
		return kc, err
	}
	builtin, hasBuiltinList := readBuiltinList(filepath.Join(modRoot, "modules.builtin"))

	deps := func(name string) ([]string, bool, error) {
		src, ok := index[name]
		if !ok {
			return nil, false, nil
		}
		dst := filepath.Join(out, ModulesDir, name+".ko")
		if err := decompressModule(ctx, src, dst); err != nil {
			return nil, false, err
		}
		d, err := moduleDepends(dst)
		return d, true, err
	}
	order, missing, err := moduleOrder(NeededModules, deps)
	if err != nil {
		return kc, err
	}
	for _, m := range missing {
		if hasBuiltinList && !builtin[m] {
			return kc, fmt.Errorf("module %q is neither shipped nor built into kernel %s", m, kc.Kernel.Release)
		}
	}
	for _, m := range order {
		kc.Modules = append(kc.Modules, ModulesDir+"/"+m+".ko")
	}
	kc.BuiltinModules = nonNil(missing)
	kc.Modules = nonNil(kc.Modules)
	return kc, nil
}

// moduleName returns the canonical module name of a module file name
// ("nf-foo.ko.xz" -> "nf_foo").
func moduleName(file string) (string, bool) {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if n, ok := strings.CutSuffix(file, ext); ok {
			return strings.ReplaceAll(n, "-", "_"), true
		}
	}
	return "", false
}

func readBuiltinList(path string) (map[string]bool, bool) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	set := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if n, ok := moduleName(filepath.Base(strings.TrimSpace(sc.Text()))); ok {
			set[n] = true
		}
	}
	return set, true
}

// decompressModule copies a module file to dst as a plain .ko.
func decompressModule(ctx context.Context, src, dst string) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	switch {
	case strings.HasSuffix(src, ".ko.xz"):
		_, err = runTool(ctx, command{name: "xz", args: []string{"-dc", src}, stdout: out})
	case strings.HasSuffix(src, ".ko.zst"):
		_, err = runTool(ctx, command{name: "zstd", args: []string{"-qdc", src}, stdout: out})
	case strings.HasSuffix(src, ".ko.gz"):
		var in *os.File
		if in, err = os.Open(src); err == nil {
			var zr *gzip.Reader
			if zr, err = gzip.NewReader(in); err == nil {
				_, err = io.Copy(out, zr)
			}
			in.Close()
		}
	default:
		var in *os.File
		if in, err = os.Open(src); err == nil {
			_, err = io.Copy(out, in)
			in.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("copy module %s: %w", filepath.Base(src), err)
	}
	return out.Close()
}

// moduleDepends reads depends= from a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", filepath.Base(path), err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo", filepath.Base(path))
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	return parseModinfoDepends(data), nil
}

func parseModinfoDepends(data []byte) []string {
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, strings.ReplaceAll(d, "-", "_"))
			}
		}
	}
	return deps
}

// moduleOrder returns a load order for roots and their dependency closure:
// every module after its dependencies, otherwise in the order given. deps
// reports a module's dependencies and whether it exists as a file; those
// that do not (built-ins) are returned in missing instead.
func moduleOrder(roots []string, deps func(string) ([]string, bool, error)) (order, missing []string, err error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(path, " -> "), name)
		}
		state[name] = visiting
		ds, ok, err := deps(name)
		if err != nil {
			return err
		}
		if !ok {
			state[name] = done
			missing = append(missing, name)
			return nil
		}
		for _, d := range ds {
			if err := visit(d, append(path, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, r := range roots {
		if err := visit(r, nil); err != nil {
			return nil, nil, err
		}
	}
	return order, missing, nil
}

// bzImagePayload returns the compressed kernel inside a bzImage, located by
// the boot protocol's setup header.
func bzImagePayload(b []byte) ([]byte, error) {
	if len(b) < 0x250 {
		return nil, errors.New("bzImage too short")
	}
	if string(b[0x202:0x206]) != "HdrS" {
		return nil, errors.New("no bzImage setup header (HdrS)")
	}
	if v := binary.LittleEndian.Uint16(b[0x206:]); v < 0x208 {
		return nil, fmt.Errorf("boot protocol %#x has no payload fields", v)
	}
	setupSects := int(b[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := uint64(binary.LittleEndian.Uint32(b[0x248:]))
	n := uint64(binary.LittleEndian.Uint32(b[0x24c:]))
	start := uint64(setupSects+1)*512 + off
	if n == 0 || start+n > uint64(len(b)) {
		return nil, fmt.Errorf("bzImage payload [%d, +%d) lies outside the %d-byte file", start, n, len(b))
	}
	return b[start : start+n], nil
}

// splitSizeTrailer splits a kernel payload into the compressed stream and the
// decompressed size the kernel build appends to it.
func splitSizeTrailer(p []byte) ([]byte, int64) {
	if len(p) < 8 {
		return p, -1
	}
	return p[:len(p)-4], int64(binary.LittleEndian.Uint32(p[len(p)-4:]))
}

func isLZ4(p []byte) bool {
	return bytes.HasPrefix(p, []byte{0x02, 0x21, 0x4c, 0x18}) || // legacy frame (the kernel's)
		bytes.HasPrefix(p, []byte{0x04, 0x22, 0x4d, 0x18})
}

// checkVmlinux makes sure path is an x86-64 ELF with a PVH entry note
// (XEN_ELFNOTE_PHYS32_ENTRY), so microvm/Firecracker can boot it directly.
func checkVmlinux(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("decompressed kernel is not an ELF file: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("vmlinux is for %v, want x86-64", f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			return err
		}
		if hasPVHNote(data, f.ByteOrder) {
			return nil
		}
	}
	return errors.New("vmlinux has no PVH entry note")
}

func hasPVHNote(data []byte, bo binary.ByteOrder) bool {
	const xenElfnotePhys32Entry = 18
	align := func(n uint32) uint32 { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz, descsz, typ := bo.Uint32(data), bo.Uint32(data[4:]), bo.Uint32(data[8:])
		total := 12 + uint64(align(namesz)) + uint64(align(descsz))
		if total > uint64(len(data)) {
			return false
		}
		name := string(bytes.TrimRight(data[12:12+namesz], "\x00"))
		if name == "Xen" && typ == xenElfnotePhys32Entry {
			return true
		}
		data = data[total:]
	}
	return false
}
