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

# Benchmarks against the performance goals (tools/bench): boot, vm,
# workspace and shell suites, each a table of medians with its ratio to the
# goal; a missed goal prints MISSED and does not fail. `make bench SUITE=vm`
# runs one suite.
bench: build
	./bin/pyro env pull debian:12-base
	./bin/pyro env pull debian:12
	go run ./tools/bench -pyro bin/pyro -suite $(or $(SUITE),all)
