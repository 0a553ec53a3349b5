package vm

// tcgWords are kernel words for guests under TCG (software emulation).
//
// norandmaps: QEMU's TCG keeps the code it translated in a cache keyed by
// the guest's virtual address (and physical page). With randomized
// mappings, every process gets its ld.so, libc, vDSO and program at new
// addresses, so every exec translates all of them again: `/bin/true` took
// ~60 ms of guest time per exec here, ~20 ms with fixed mappings, and
// `python3 -c pass` 1.9 s against 0.7 s. It is also what makes a warm
// pool's priming exec pay off for the next command (pool.go).
//
// What it costs: processes inside the guest lose address-space
// randomization against each other and against what reaches a guest
// service. The guest is the sandbox (DESIGN.md: everything in it is
// untrusted and commands run as root in it), so the host's boundary does
// not change; KVM guests, which translate nothing, keep randomization.
func tcgWords(acceleration string) []string {
	if acceleration != "tcg" {
		return nil
	}
	return []string{"norandmaps"}
}
