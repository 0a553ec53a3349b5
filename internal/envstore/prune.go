package envstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pyro-mcp/pyro/internal/catalog"
)

// PruneResult lists what Prune removed.
type PruneResult struct {
	Removed    []PrunedItem `json:"removed"`
	FreedBytes int64        `json:"freed_bytes"`
}

// PrunedItem is one removed directory.
type PrunedItem struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
	Bytes  int64  `json:"bytes"`
}

// Prune removes partial builds, versions other than the catalog's current
// one, names the catalog no longer has, damaged installs (fast check, as
// Get), and cached kernels no remaining install uses. An intact current
// version of a catalog environment stays.
func (s *Store) Prune(ctx context.Context) (PruneResult, error) {
	res := PruneResult{Removed: []PrunedItem{}}
	fl, err := s.lock(ctx, nil)
	if err != nil {
		return res, err
	}
	defer fl.Unlock()
	remove := func(path, reason string) error { return s.pruneTree(ctx, &res, path, reason) }

	kernelsInUse := map[string]bool{}
	ents, err := os.ReadDir(s.root)
	if err != nil {
		return res, fmt.Errorf("read environment store: %w", err)
	}
	for _, d := range ents {
		p := filepath.Join(s.root, d.Name())
		if strings.HasPrefix(d.Name(), tmpPrefix) {
			if err := remove(p, "partial build"); err != nil {
				return res, err
			}
			continue
		}
		if strings.HasPrefix(d.Name(), ".") || !d.IsDir() {
			continue // the lock and anything that is not ours
		}
		if d.Name() == imagesDir {
			s.imageKernelsInUse(kernelsInUse) // PruneImages prunes images
			continue
		}
		name, ok := nameFromSafe(d.Name())
		if !ok {
			continue // not a directory this store made
		}
		e, err := catalog.Lookup(name)
		if err != nil {
			if err := remove(p, fmt.Sprintf("%q is no longer in the catalog", name)); err != nil {
				return res, err
			}
			continue
		}
		versions, err := os.ReadDir(p)
		if err != nil {
			return res, err
		}
		kept := 0
		for _, v := range versions {
			vp := filepath.Join(p, v.Name())
			switch {
			case !v.IsDir():
				kept++ // not ours; leave it
			case v.Name() != e.Version:
				if err := remove(vp, fmt.Sprintf("version %q superseded by %q", v.Name(), e.Version)); err != nil {
					return res, err
				}
			default:
				inst, reason, err := s.check(e, false)
				if err != nil {
					return res, err
				}
				if reason != "" {
					if err := remove(vp, "damaged: "+reason); err != nil {
						return res, err
					}
					continue
				}
				kept++
				kernelsInUse[kernelCacheKey(inst.Manifest.Kernel.Version)] = true
			}
		}
		if kept == 0 {
			_ = os.Remove(p) // only if empty
		}
	}
	return res, s.pruneKernels(ctx, &res, kernelsInUse)
}

// pruneKernels removes cached kernels no kept install uses, and partial
// extractions. Call with the lock held.
func (s *Store) pruneKernels(ctx context.Context, res *PruneResult, inUse map[string]bool) error {
	ents, err := os.ReadDir(s.kernelsDir())
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read kernel cache: %w", err)
	}
	for _, d := range ents {
		if !d.IsDir() || inUse[d.Name()] {
			continue
		}
		reason := "kernel no installed environment uses"
		if strings.HasPrefix(d.Name(), tmpPrefix) {
			reason = "partial kernel extraction"
		}
		if err := s.pruneTree(ctx, res, filepath.Join(s.kernelsDir(), d.Name()), reason); err != nil {
			return err
		}
	}
	return nil
}

// pruneTree removes the tree at path (unless ctx has ended) and records it
// in res with its reason and size. Call with the lock held.
func (s *Store) pruneTree(ctx context.Context, res *PruneResult, path, reason string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n, _ := diskUsage(path)
	if err := removeTree(path); err != nil {
		return fmt.Errorf("prune %s: %w", path, err)
	}
	s.log.Info("pruned", "path", path, "reason", reason, "bytes", n)
	res.Removed = append(res.Removed, PrunedItem{Path: path, Reason: reason, Bytes: n})
	res.FreedBytes += n
	return nil
}
