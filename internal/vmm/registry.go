package vmm

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// Backends register themselves (from an init function of their package)
// with a probe that says whether they can run here, lima's driver registry
// style. Boot asks the registry in priority order; adding a VMM adds a
// package and a Register call, not branches in the boot code.

// ProbeInput is what a probe may look at.
type ProbeInput struct {
	CacheDir string // for cached verdicts (the KVM probe)
	Spec     Spec
	// FallbackAllowed is true when a weaker backend would be taken if this
	// one fails: a probe then checks more thoroughly (e.g. that the binary
	// really runs) rather than failing later at start.
	FallbackAllowed bool
}

// Probed is a backend ready to start machines, with a note for people
// (why this acceleration, what isolation).
type Probed struct {
	Backend Backend
	Note    string
}

// Unusable is a probe's answer when its backend cannot run here: Reason
// says why (shown to people inside other messages), Hint how to fix it.
type Unusable struct {
	Reason string
	Hint   string
}

func (u *Unusable) Error() string {
	if u.Hint == "" {
		return u.Reason
	}
	return u.Reason + " (hint: " + u.Hint + ")"
}

// Registration is one backend offered to Boot.
type Registration struct {
	Name string
	// Priority orders automatic choice, lowest first.
	Priority int
	// WeakerIsolation marks a backend that is not a VM (host-compat): it is
	// only taken when the caller allowed it.
	WeakerIsolation bool
	// Explicit backends (test fakes) are never chosen automatically, only
	// by name (PYRO_BACKEND).
	Explicit bool
	// Probe returns a ready backend, or an *Unusable saying why not.
	Probe func(ctx context.Context, in ProbeInput) (Probed, error)
}

var (
	regMu sync.Mutex
	regs  = map[string]Registration{}
)

// Register adds a backend. Registering a name twice is a programming error.
func Register(r Registration) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := regs[r.Name]; dup {
		panic(fmt.Sprintf("vmm: backend %q registered twice", r.Name))
	}
	regs[r.Name] = r
}

// Lookup returns the registration of name.
func Lookup(name string) (Registration, bool) {
	regMu.Lock()
	defer regMu.Unlock()
	r, ok := regs[name]
	return r, ok
}

// Registered returns every registration, lowest priority first.
func Registered() []Registration {
	regMu.Lock()
	defer regMu.Unlock()
	out := make([]Registration, 0, len(regs))
	for _, r := range regs {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Priority != out[j].Priority {
			return out[i].Priority < out[j].Priority
		}
		return out[i].Name < out[j].Name
	})
	return out
}
