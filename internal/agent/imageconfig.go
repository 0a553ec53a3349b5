package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// ImageDefaults is what an OCI image's config changes for the commands the
// agent starts.
type ImageDefaults struct {
	Env        map[string]string   // nil: DefaultEnv()
	Cwd        string              // "": "/"
	Credential *syscall.Credential // nil: root
	// Refuse, when set, is why no user command may run: the image's
	// config exists but cannot be applied (its User names nobody in
	// /etc/passwd, the file is corrupt). Running as root instead would
	// hand root to an image that asked for a user.
	Refuse error
}

// LoadImageDefaults is LoadImageConfig for the agent: an error becomes
// Refuse, with the defaults otherwise empty, so the guest still boots and
// answers and every command says why it cannot run.
func LoadImageDefaults(path, root string) ImageDefaults {
	d, err := LoadImageConfig(path, root)
	if err != nil {
		return ImageDefaults{Refuse: errdefs.Wrap(errdefs.ErrFailedPrecondition, err,
			"give the image a USER that its /etc/passwd lists (or a numeric uid[:gid]) and pull it again",
			"the image's config cannot be applied, and pyro does not run its commands as root instead")}
	}
	return d
}

// maxConfigBytes bounds the files read here: they come from the image.
const maxConfigBytes = 4 << 20

// LoadImageConfig reads the image config at path (agentapi.ImageConfigPath;
// absent for catalog environments, which is no error) and resolves its User
// against root's /etc/passwd and /etc/group, as Docker does: "name",
// "uid", "name:group" or "uid:gid"; a named user gets the supplementary
// groups /etc/group lists it in, and HOME from its passwd entry unless the
// image's Env sets HOME.
func LoadImageConfig(path, root string) (ImageDefaults, error) {
	var d ImageDefaults
	b, err := readBounded(path)
	if errors.Is(err, fs.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return d, err
	}
	var cfg agentapi.ImageConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return d, fmt.Errorf("parse %s: %w", path, err)
	}
	env := DefaultEnv()
	imageSetsHome := false
	for _, kv := range cfg.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsAny(k, "\x00") || strings.IndexByte(v, 0) >= 0 {
			continue
		}
		env[k] = v
		imageSetsHome = imageSetsHome || k == "HOME"
	}
	d.Env = env
	if filepath.IsAbs(cfg.WorkingDir) {
		if st, err := os.Stat(filepath.Join(root, cfg.WorkingDir)); err == nil && st.IsDir() {
			d.Cwd = filepath.Clean(cfg.WorkingDir)
		}
	}
	if cfg.User == "" {
		return d, nil
	}
	cred, home, err := resolveUser(cfg.User, root)
	if err != nil {
		return d, err
	}
	d.Credential = cred
	if !imageSetsHome && home != "" {
		env["HOME"] = home
	}
	return d, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxConfigBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxConfigBytes)
	}
	return b, nil
}

// colonFile reads a passwd- or group-style file into its fields per line.
func colonFile(path string) [][]string {
	b, err := readBounded(path)
	if err != nil {
		return nil
	}
	var out [][]string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(make([]byte, 64<<10), maxConfigBytes)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out
}

func parseID(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}

// resolveUser turns an image's User into a credential and a home directory.
func resolveUser(spec, root string) (*syscall.Credential, string, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	cred := &syscall.Credential{}
	var name, home string
	found := false
	for _, f := range colonFile(filepath.Join(root, "etc/passwd")) {
		if len(f) < 7 {
			continue
		}
		if f[0] == userPart || f[2] == userPart {
			uid, ok1 := parseID(f[2])
			gid, ok2 := parseID(f[3])
			if !ok1 || !ok2 {
				continue
			}
			cred.Uid, cred.Gid, name, home, found = uid, gid, f[0], f[5], true
			break
		}
	}
	if !found {
		uid, ok := parseID(userPart)
		if !ok {
			return nil, "", fmt.Errorf("image user %q is not in /etc/passwd", userPart)
		}
		cred.Uid, cred.Gid, home = uid, 0, "/"
	}
	groups := colonFile(filepath.Join(root, "etc/group"))
	if hasGroup {
		gid, ok := parseID(groupPart)
		if !ok {
			ok = false
			for _, f := range groups {
				if len(f) >= 3 && f[0] == groupPart {
					gid, ok = parseID(f[2])
					break
				}
			}
			if !ok {
				return nil, "", fmt.Errorf("image group %q is not in /etc/group", groupPart)
			}
		}
		cred.Gid = gid
	}
	cred.Groups = []uint32{cred.Gid}
	if name != "" && !hasGroup {
		for _, f := range groups {
			if len(f) < 4 {
				continue
			}
			for _, m := range strings.Split(f[3], ",") {
				if m == name {
					if gid, ok := parseID(f[2]); ok && gid != cred.Gid {
						cred.Groups = append(cred.Groups, gid)
					}
				}
			}
		}
	}
	return cred, home, nil
}
