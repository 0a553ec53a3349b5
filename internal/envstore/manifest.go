package envstore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// File names inside an installed environment directory.
const (
	ManifestFile = "manifest.json"
	KernelFile   = "vmlinux"
	RootfsFile   = "rootfs.ext4"
	ModulesDir   = "modules"
)

// Manifest describes an installed environment. It is written last; its
// presence marks the directory complete.
type Manifest struct {
	Name           string              `json:"name"`
	Version        string              `json:"version"`
	Description    string              `json:"description"`
	Packages       []string            `json:"packages"`
	Kernel         KernelInfo          `json:"kernel"`
	Files          map[string]FileInfo `json:"files"`
	Modules        []string            `json:"modules"`         // load order, paths relative to the directory
	BuiltinModules []string            `json:"builtin_modules"` // needed modules the kernel has built in
	Source         string              `json:"source"`          // "local-build"
	BuildTool      string              `json:"build_tool"`      // "mmdebstrap" or "debootstrap"
	Mirror         string              `json:"mirror"`
	BuiltAt        time.Time           `json:"built_at"`
	TotalBytes     int64               `json:"total_bytes"`
	Digest         string              `json:"digest"`          // "sha256:<hex>" over the sorted file digests
	Image          *ImageInfo          `json:"image,omitempty"` // set when converted from an OCI image
}

// KernelInfo names the Debian kernel package an environment's kernel came from.
type KernelInfo struct {
	Package string `json:"package"` // linux-image-6.1.0-56-cloud-amd64-unsigned
	Version string `json:"version"` // package version, 6.1.192-2
	Release string `json:"release"` // uname -r, 6.1.0-56-cloud-amd64
}

// FileInfo is the size and digest of one file of an environment.
type FileInfo struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// computeDigest is sha256 over "path sha256\n" lines sorted by path.
func computeDigest(files map[string]FileInfo) string {
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	h := sha256.New()
	for _, p := range paths {
		fmt.Fprintf(h, "%s %s\n", p, files[p].SHA256)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func readManifest(dir string) (Manifest, error) {
	var m Manifest
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("parse %s: %w", ManifestFile, err)
	}
	return m, nil
}

func writeManifest(dir string, m Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dir, ManifestFile), append(b, '\n'), 0o644)
}

// progressFunc reports bytes done of a total.
type progressFunc func(done, total int64)

// hashFile returns the sha256 of a file, reporting progress every 16 MiB.
func hashFile(path string, progress progressFunc) (FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileInfo{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return FileInfo{}, err
	}
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var done int64
	for {
		n, err := f.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			done += int64(n)
			if progress != nil && done%(16<<20) < int64(n) {
				progress(done, st.Size())
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return FileInfo{}, err
		}
	}
	if progress != nil {
		progress(done, st.Size())
	}
	return FileInfo{Size: done, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// hashTree hashes every regular file under dir except the manifest.
func hashTree(dir string, progress func(path string, done, total int64)) (map[string]FileInfo, error) {
	files := map[string]FileInfo{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() || rel == ManifestFile {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", rel)
		}
		var pf progressFunc
		if progress != nil {
			pf = func(done, total int64) { progress(rel, done, total) }
		}
		fi, err := hashFile(p, pf)
		if err != nil {
			return err
		}
		files[rel] = fi
		return nil
	})
	return files, err
}

// verify checks an installed directory against its manifest and returns what
// is wrong, or "" when it is intact. With full false the rootfs image is only
// size-checked (hashing it costs seconds); everything else is hashed.
func verify(dir string, m Manifest, wantName, wantVersion string, full bool) string {
	if m.Name != wantName || m.Version != wantVersion {
		return fmt.Sprintf("manifest names %q version %q, want %q version %q", m.Name, m.Version, wantName, wantVersion)
	}
	for _, req := range []string{KernelFile, RootfsFile} {
		if _, ok := m.Files[req]; !ok {
			return fmt.Sprintf("manifest lists no %s", req)
		}
	}
	for _, mod := range m.Modules {
		if _, ok := m.Files[mod]; !ok {
			return fmt.Sprintf("manifest lists module %s but not its digest", mod)
		}
	}
	if m.Digest != computeDigest(m.Files) {
		return "manifest digest does not match its file list"
	}
	return checkFiles(dir, m.Files, full)
}

// checkFiles checks that every listed file is a regular file of the listed
// size, then hashes them all (the rootfs image only when hashRootfs).
func checkFiles(dir string, files map[string]FileInfo, hashRootfs bool) string {
	paths := sortedKeys(files)
	for _, rel := range paths {
		want := files[rel]
		if !filepath.IsLocal(rel) {
			return fmt.Sprintf("file list names a path outside the directory: %q", rel)
		}
		p := filepath.Join(dir, filepath.FromSlash(rel))
		st, err := os.Lstat(p)
		if err != nil {
			if os.IsNotExist(err) {
				return fmt.Sprintf("%s is missing", rel)
			}
			return fmt.Sprintf("%s: %v", rel, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Sprintf("%s is not a regular file", rel)
		}
		if st.Size() != want.Size {
			return fmt.Sprintf("%s has %d bytes, want %d", rel, st.Size(), want.Size)
		}
	}
	stamps := readStamps(dir)
	restamped := false
	for _, rel := range paths {
		if rel == RootfsFile && !hashRootfs {
			continue
		}
		p := filepath.Join(dir, filepath.FromSlash(rel))
		// A file whose inode, size and ctime are those it had when it was
		// last hashed has not been written since: the fast check skips it.
		if !hashRootfs && stamps[rel] == stampOf(p) && stamps[rel] != (fileStamp{}) {
			continue
		}
		got, err := hashFile(p, nil)
		if err != nil {
			return fmt.Sprintf("%s: %v", rel, err)
		}
		if got.SHA256 != files[rel].SHA256 {
			return fmt.Sprintf("%s has sha256 %s, want %s", rel, short(got.SHA256), short(files[rel].SHA256))
		}
		stamps[rel] = stampOf(p)
		restamped = true
	}
	if restamped { // a check that hashed nothing leaves the stamps as they are
		writeStamps(dir, stamps)
	}
	return ""
}

// stampsFile records, per file, the stat of its last successful hash.
const stampsFile = ".verified.json"

// fileStamp is what changes whenever a file's content is written: the
// kernel updates ctime on every write and no user can set it back.
type fileStamp struct {
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	CtimeNS int64  `json:"ctime_ns"`
}

func stampOf(p string) fileStamp {
	var st syscall.Stat_t
	if syscall.Stat(p, &st) != nil {
		return fileStamp{}
	}
	return fileStamp{Ino: st.Ino, Size: st.Size, CtimeNS: st.Ctim.Nano()}
}

func readStamps(dir string) map[string]fileStamp {
	m := map[string]fileStamp{}
	if b, err := os.ReadFile(filepath.Join(dir, stampsFile)); err == nil {
		_ = json.Unmarshal(b, &m)
	}
	return m
}

// writeStamps saves the stamps atomically; failing to is harmless (the
// next check hashes again).
func writeStamps(dir string, m map[string]fileStamp) {
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	_ = fsutil.WriteCache(filepath.Join(dir, stampsFile), b, 0o644)
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
