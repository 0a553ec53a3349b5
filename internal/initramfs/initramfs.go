// Package initramfs builds the guest's initramfs: an uncompressed newc cpio
// holding the pyro binary as /init and the kernel modules the guest loads
// before it mounts its root disk.
package initramfs

import (
	"bufio"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// layoutVersion changes whenever the archive layout changes, so old cache
// entries are not reused.
const layoutVersion = "pyro-initramfs-v1"

// Layout inside the archive (the agent reads these paths).
const (
	ModulesDir   = "pyro/modules"
	ModulesOrder = "pyro/modules.order"
)

// Build writes (or reuses) an uncompressed newc cpio initramfs containing
// /init (a copy of agentBinary, mode 0755), the given module files under
// /pyro/modules/ and /pyro/modules.order listing them (by base name, one a
// line) in the given order, /dev/console and empty dirs /dev /proc /sys
// /newroot /run. It is cached under cacheDir/initramfs/<sha256 of
// inputs>.cpio and written atomically. The binary's digest is memoised in a
// sidecar keyed by (path, size, mtime, inode), so a cache hit costs a few
// stats plus hashing the (small) modules.
func Build(cacheDir, agentBinary string, modules []string) (string, error) {
	dir := filepath.Join(cacheDir, "initramfs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create initramfs cache: %w", err)
	}
	binSum, err := binaryDigest(dir, agentBinary)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\ninit %s\n", layoutVersion, binSum)
	seen := map[string]bool{}
	for _, m := range modules {
		base := filepath.Base(m)
		if seen[base] {
			return "", errdefs.New(errdefs.ErrInvalidArgument, "", "module %q listed twice", base)
		}
		seen[base] = true
		sum, err := fileDigest(m)
		if err != nil {
			return "", errdefs.Wrap(errdefs.ErrNotFound, err, "rebuild or re-pull the environment", "read kernel module")
		}
		fmt.Fprintf(h, "module %s %s\n", base, sum)
	}
	out := filepath.Join(dir, hex.EncodeToString(h.Sum(nil))+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*.cpio")
	if err != nil {
		return "", fmt.Errorf("create initramfs: %w", err)
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := writeArchive(bw, agentBinary, modules); err != nil {
		tmp.Close()
		return "", err
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("install initramfs: %w", err)
	}
	return out, nil
}

func writeArchive(w io.Writer, agentBinary string, modules []string) error {
	c := &cpioWriter{w: w}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "run", "pyro", ModulesDir} {
		if err := c.dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := c.charDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := copyFile(c, "init", 0o755, agentBinary); err != nil {
		return err
	}
	var order strings.Builder
	for _, m := range modules {
		base := filepath.Base(m)
		if err := copyFile(c, ModulesDir+"/"+base, 0o644, m); err != nil {
			return err
		}
		order.WriteString(base + "\n")
	}
	if err := c.file(ModulesOrder, 0o644, []byte(order.String())); err != nil {
		return err
	}
	return c.close()
}

func copyFile(c *cpioWriter, name string, perm uint32, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("add %s to initramfs: %w", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := c.fileFrom(name, perm, st.Size(), f); err != nil {
		return fmt.Errorf("add %s to initramfs: %w", name, err)
	}
	return nil
}

// sidecar memoises a binary's digest.
type sidecar struct {
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	MtimeNS int64  `json:"mtime_ns"`
	Inode   uint64 `json:"inode"`
	Dev     uint64 `json:"dev"`
	SHA256  string `json:"sha256"`
}

func binaryDigest(dir, path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", errdefs.Wrap(errdefs.ErrNotFound, err, "", "agent binary %q", path)
	}
	key := sidecar{Path: abs, Size: st.Size(), MtimeNS: st.ModTime().UnixNano()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		key.Inode, key.Dev = sys.Ino, uint64(sys.Dev)
	}
	ph := sha256.Sum256([]byte(abs))
	side := filepath.Join(dir, "bin-"+hex.EncodeToString(ph[:8])+".json")
	if b, err := os.ReadFile(side); err == nil {
		var old sidecar
		if json.Unmarshal(b, &old) == nil && old.SHA256 != "" {
			cached := old.SHA256
			old.SHA256 = ""
			if old == key {
				return cached, nil
			}
		}
	}
	sum, err := fileDigest(abs)
	if err != nil {
		return "", fmt.Errorf("hash agent binary: %w", err)
	}
	key.SHA256 = sum
	if b, err := json.Marshal(key); err == nil {
		_ = fsutil.WriteCache(side, b, 0o644)
	}
	return sum, nil
}

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// CheckStatic returns an errdefs.ErrFailedPrecondition error if path is a
// dynamically linked ELF (it has a PT_INTERP program header): such a binary
// cannot run as the guest's /init.
func CheckStatic(path string) error {
	if _, err := os.Stat(path); err != nil {
		return errdefs.Wrap(errdefs.ErrNotFound, err, "", "agent binary %q", path)
	}
	f, err := elf.Open(path)
	if err != nil {
		return errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "build pyro with CGO_ENABLED=0", "%q is not an ELF binary", path)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errdefs.New(errdefs.ErrFailedPrecondition, "build pyro with CGO_ENABLED=0",
				"%q is dynamically linked and cannot run as the guest init", path)
		}
	}
	return nil
}
