package catalog

import (
	"errors"
	"slices"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func TestLookup(t *testing.T) {
	e, err := Lookup(DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Default || e.Version == "" {
		t.Fatalf("default entry = %+v", e)
	}
	for _, p := range []string{"bash", "coreutils", "python3", "curl", "git", "ca-certificates"} {
		if !slices.Contains(e.Packages, p) {
			t.Errorf("debian:12 lacks %q", p)
		}
	}
	b, err := Lookup("debian:12-build")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append([]string{"build-essential", "python3-pip", "python3-venv", "make", "pkg-config"}, e.Packages...) {
		if !slices.Contains(b.Packages, p) {
			t.Errorf("debian:12-build lacks %q", p)
		}
	}
	if base, err := Lookup("debian:12-base"); err != nil || len(base.Packages) != 0 || base.Packages == nil {
		t.Fatalf("debian:12-base = %+v, %v", base, err)
	}

	_, err = Lookup("ubuntu:24.04")
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown name: err = %v, want not found", err)
	}
	if got := err.Error(); got != "unknown environment \"ubuntu:24.04\" (hint: run `pyro env list` to see the catalog)" {
		t.Fatalf("message = %q", got)
	}
}

func TestAllIsACopyWithOneDefault(t *testing.T) {
	all := All()
	if len(all) != 3 {
		t.Fatalf("len = %d", len(all))
	}
	defaults := 0
	names := map[string]bool{}
	for _, e := range all {
		if e.Default {
			defaults++
		}
		if names[e.Name] {
			t.Errorf("duplicate %q", e.Name)
		}
		names[e.Name] = true
	}
	if defaults != 1 {
		t.Fatalf("defaults = %d", defaults)
	}
	all[0].Packages[0] = "changed"
	if All()[0].Packages[0] == "changed" {
		t.Fatal("All exposes internal slices")
	}
}
