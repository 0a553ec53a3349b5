package agent

import "testing"

// Every restore or fork names the guest anew: the machine's 127.0.1.1
// line follows it (the user's other names on it stay) instead of growing
// a line per hostname the workspace ever had.
func TestHostsContentFollowsHostname(t *testing.T) {
	for _, c := range []struct{ in, host, want string }{
		{"127.0.0.1\tlocalhost\n127.0.1.1\tpyro\n::1\tlocalhost\n", "pyro-a1", "127.0.0.1\tlocalhost\n127.0.1.1\tpyro-a1\n::1\tlocalhost\n"},
		{"127.0.1.1\tpyro-a1 myalias\n", "pyro-b2", "127.0.1.1\tpyro-b2 myalias\n"},
		{"127.0.0.1\tlocalhost\n", "pyro-c3", "127.0.0.1\tlocalhost\n127.0.1.1\tpyro-c3\n"},
		{"127.0.0.1\tlocalhost", "pyro-c3", "127.0.0.1\tlocalhost\n127.0.1.1\tpyro-c3\n"},
		{"#127.0.1.1\tpyro\n", "pyro-d4", "#127.0.1.1\tpyro\n127.0.1.1\tpyro-d4\n"},
		{"10.0.0.5\tpyro-e5\n", "pyro-e5", "10.0.0.5\tpyro-e5\n"},
	} {
		got, changed := hostsContent([]byte(c.in), c.host)
		if string(got) != c.want || changed != (c.in != c.want) {
			t.Errorf("hostsContent(%q, %q) = %q, %v; want %q", c.in, c.host, got, changed, c.want)
		}
	}
	// A hundred restores later there is still one line for the machine.
	b := []byte("127.0.0.1\tlocalhost\n127.0.1.1\tpyro\n")
	for i := range 100 {
		b, _ = hostsContent(b, "pyro-"+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	if want := "127.0.0.1\tlocalhost\n127.0.1.1\tpyro-vd\n"; string(b) != want {
		t.Fatalf("after 100 hostnames: %q, want %q", b, want)
	}
}
