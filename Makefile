# Conveniences; scripts/ holds the real commands.
.PHONY: build test unit bench setup

build:
	./scripts/build.sh bin/pyro

setup:
	./scripts/setup.sh

# The whole suite, as CI runs it.
test:
	./scripts/test.sh

# Fast, VM-free unit tests.
unit:
	go test ./...

# Median of `pyro run debian:12-base -- true` against a bare QEMU boot of the
# same kernel, initramfs and root image, and their ratio.
bench: build
	./bin/pyro env pull debian:12-base
	go run ./tools/bench -pyro bin/pyro -env debian:12-base -n 10
