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
//
// tsc=reliable: a TCG guest's TSC is QEMU's, derived from the host's
// invariant TSC and stopped with the guest, so it is sound; the kernel's
// only watchdog for it on microvm (no HPET, no ACPI PM timer) is
// refined-jiffies, which counts timer ticks, and a TCG vCPU busy
// translating (every restore, a loaded host) delivers ticks late. The
// watchdog then declared the TSC unstable in nearly every restored guest
// (dmesg: "Marking clocksource 'tsc' as unstable ... Switched to
// clocksource refined-jiffies"): the switch itself patches kernel text
// (static keys) under a freshly restored, untranslated kernel, and from
// then on every clock read in the guest (Go's scheduler reads it all the
// time) is a system call with 4 ms resolution instead of a vDSO read.
//
// lsm=landlock,lockdown,yama,bpf and psi=0: code that TCG translates
// afresh in every restored guest, on paths every start runs (each open,
// stat, mmap, exec; each context switch), for features a guest does not
// use. The list drops AppArmor and TOMOYO (no policy is ever loaded in a
// guest, so they confine nothing), IMA/EVM, LoadPin and SafeSetID, and
// keeps the LSMs a user's sandboxing tools may ask for (Landlock, Yama);
// nobody reads a guest's pressure stall figures. Measured with QEMU's
// -d in_asm on a warm `pyro run -- true`: ~500 and ~150 of the ~27,000
// translated blocks.
func tcgWords(acceleration string) []string {
	if acceleration != "tcg" {
		return nil
	}
	return []string{"norandmaps", "tsc=reliable", "lsm=landlock,lockdown,yama,bpf", "psi=0"}
}
