package netpolicy

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func TestParseNormalises(t *testing.T) {
	p, err := Parse("EGRESS", []string{"PyPI.org.", "*.GitHub.com:443", "10.1.0.0/16", "10.2.0.7", "[FD00::/8]:8080", "@pypi", "pypi.org", "::ffff:192.168.1.0/120", "2001:db8::1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"pypi.org", "*.github.com:443", "10.1.0.0/16", "10.2.0.7/32", "[fd00::/8]:8080", "@pypi", "192.168.1.0/24", "2001:db8::1/128"}
	if p.Mode != Egress || strings.Join(p.AllowHosts, " ") != strings.Join(want, " ") {
		t.Fatalf("got %v %q, want %q", p.Mode, p.AllowHosts, want)
	}
	// Normal forms parse to themselves.
	q, err := p.Check()
	if err != nil || strings.Join(q.AllowHosts, " ") != strings.Join(want, " ") {
		t.Fatalf("re-parse: %v %q", err, q.AllowHosts)
	}
}

func TestParseRejects(t *testing.T) {
	long := strings.Repeat("a", 64) + ".com"
	overlong := strings.Repeat("abcdefghi.", 26) + "com" // 263 characters
	cases := map[string][]string{
		"unknown mode":           nil,
		"egress":                 {"pypi.org:0"},
		"egress ":                {"pypi.org:65536"},
		"egress  ":               {"pypi.org:-1"},
		"egress   ":              {"pypi.org:"},
		"egress    ":             {long},
		"egress     ":            {overlong},
		"egress      ":           {"*.com"},
		"egress       ":          {"*"},
		"egress        ":         {"a.*.com"},
		"egress         ":        {"10.0.0.1/8"},
		"egress          ":       {"10.0.0.0/33"},
		"egress           ":      {"300.1.1.1"},
		"egress+published-ports": {"exa mple.com"},
		" egress":                {"-bad.com"},
		"  egress":               {"@nope"},
		"   egress":              {"@pypi:443"},
		"    egress":             {""},
		"     egress":            {"fe80::1%eth0"},
		"      egress":           {"[::1"},
		"off":                    {"pypi.org"},
		"":                       {"pypi.org"},
	}
	for mode, hosts := range cases {
		_, err := Parse(strings.TrimSpace(mode), hosts)
		if mode == "unknown mode" {
			_, err = Parse("egress-ish", nil)
		}
		if !errors.Is(err, errdefs.ErrInvalidArgument) || errdefs.Hint(err) == "" {
			t.Errorf("Parse(%q, %q) = %v, want invalid_argument with a hint", mode, hosts, err)
		}
	}
	if _, err := Parse("egress", make([]string, MaxEntries+1)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("too many entries: %v", err)
	}
}

func TestPresetsParse(t *testing.T) {
	for _, name := range PresetNames() {
		hs, _ := PresetHosts(name)
		if len(hs) == 0 {
			t.Fatalf("%s is empty", name)
		}
		if _, err := Parse("egress", hs); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

func TestPolicyJSON(t *testing.T) {
	b, _ := json.Marshal(Policy{}.Normalized())
	if string(b) != `{"network_policy":"off"}` {
		t.Fatalf("zero policy = %s", b)
	}
	p, _ := Parse("egress", []string{"@npm"})
	b, _ = json.Marshal(p)
	if string(b) != `{"network_policy":"egress","allow_hosts":["@npm"]}` {
		t.Fatalf("got %s", b)
	}
}

func TestWithin(t *testing.T) {
	mp := func(mode string, hosts ...string) Policy {
		p, err := Parse(mode, hosts)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	open := mp("egress")
	pinned := mp("egress", "*.example.com:443", "pypi.org", "10.9.0.0/16", "@github")
	ok := []struct{ p, max Policy }{
		{mp("off"), open},
		{mp("egress"), open},
		{mp("egress", "pypi.org", "1.2.3.0/24", "0.0.0.0/0"), open},
		{mp("off"), pinned},
		{mp("egress", "a.example.com:443", "*.b.example.com:443"), pinned},
		{mp("egress", "pypi.org:443", "10.9.3.0/24"), pinned},
		{mp("egress", "@github", "api.github.com"), pinned},
		{mp("egress", "10.0.0.0/8"), mp("egress+published-ports", "10.0.0.0/8")},
	}
	for _, c := range ok {
		if err := c.p.Within(c.max); err != nil {
			t.Errorf("%v within %v: %v", c.p, c.max, err)
		}
	}
	bad := []struct{ p, max Policy }{
		{mp("egress"), mp("off")},
		{mp("egress+published-ports"), open},
		{mp("egress"), pinned},                                 // open is wider than a list
		{mp("egress", "example.com:443"), pinned},              // the suffix itself is not under *.
		{mp("egress", "a.example.com"), pinned},                // any port is wider than :443
		{mp("egress", "*.example.com"), pinned},                // same
		{mp("egress", "evilexample.com:443"), pinned},          //
		{mp("egress", "example.com.evil:443"), pinned},         //
		{mp("egress", "10.0.0.0/8"), pinned},                   // wider CIDR
		{mp("egress", "@npm"), pinned},                         //
		{mp("egress", "127.0.0.1"), open},                      // protected ranges need the operator
		{mp("egress", "10.1.2.0/24"), open},                    //
		{mp("egress", "169.254.169.254"), open},                //
		{mp("egress", "[::ffff:127.0.0.1/128]:80"), open},      //
		{mp("egress", "fd00::/8"), open},                       //
		{mp("egress", "pypi.org"), mp("egress", "10.0.0.0/8")}, // a name is not covered by a CIDR
		{mp("egress", "0.0.0.0/0"), mp("egress", "1.0.0.0/8")}, //
		{mp("egress", "::/0"), mp("egress", "0.0.0.0/0")},      // families differ
	}
	for _, c := range bad {
		err := c.p.Within(c.max)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.max.Normalized().String()) {
			t.Errorf("%v within %v = %v, want invalid_argument naming the max", c.p, c.max, err)
		}
	}
}
