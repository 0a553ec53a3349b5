package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// The files an identity refresh writes are kept open from before the
// snapshot and rewritten in place through those descriptors (no open on
// a restored guest's path); one replaced since is written by its path.
func TestKeptIdentityFiles(t *testing.T) {
	dir := t.TempDir()
	hosts, mid := filepath.Join(dir, "hosts"), filepath.Join(dir, "machine-id")
	if err := os.WriteFile(hosts, []byte("127.0.0.1\tlocalhost\n127.0.1.1\tpyro-golden\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mid, []byte("0123456789abcdef0123456789abcdef\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	k := openKeptFiles(hosts, mid)
	if k.hosts.fd < 0 || k.machineID.fd < 0 || k.urandom < 0 {
		t.Fatalf("kept %+v", k)
	}
	before, _ := os.Stat(hosts)
	k.writeHosts("pyro-1234abcd")
	if err := k.writeMachineID([]byte("ffff\n")); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(hosts)
	if string(got) != "127.0.0.1\tlocalhost\n127.0.1.1\tpyro-1234abcd\n" {
		t.Fatalf("hosts %q", got)
	}
	if after, _ := os.Stat(hosts); !os.SameFile(before, after) {
		t.Fatal("hosts replaced, not rewritten in place")
	}
	if got, _ := os.ReadFile(mid); string(got) != "ffff\n" {
		t.Fatalf("machine-id %q (cut to size)", got)
	}
	// Named already: left alone.
	k.writeHosts("pyro-1234abcd")
	if again, _ := os.ReadFile(hosts); string(again) != string(got) {
		t.Fatalf("hosts %q", again)
	}
	// Another file renamed over the path: written by path, the old inode
	// untouched.
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, []byte("10.0.0.1\tmine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, hosts); err != nil {
		t.Fatal(err)
	}
	k.writeHosts("pyro-5678abcd")
	if got, _ := os.ReadFile(hosts); string(got) != "10.0.0.1\tmine\n127.0.1.1\tpyro-5678abcd\n" {
		t.Fatalf("replaced hosts %q", got)
	}
}
