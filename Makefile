# Build, test and package mcpagent. `make help` lists the targets.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
export CGO_ENABLED := 0

.PHONY: build test demo clean help

## build: bin/mcpagent and bin/mcpgw for this machine (static, stripped)
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/mcpagent ./cmd/mcpagent
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/mcpgw ./cmd/mcpgw

## test: every test, as CI runs them (needs root; re-runs itself with sudo)
test:
	scripts/test.sh

## bench: side-by-side benchmarks on the testbed; writes bench/results.md and bench/results.json (needs root; BENCHFLAGS=-reps 5 ...)
.PHONY: bench
bench:
	BENCH_COMMAND='make bench$(if $(BENCHFLAGS), BENCHFLAGS="$(BENCHFLAGS)")' scripts/bench.sh $(BENCHFLAGS)

## demo: testbed up, agent and mcpgw started, a download through both uplinks
demo:
	scripts/demo.sh

## ipk: dist/mcpagent_<version>_<arch>.ipk for opkg, no SDK needed (ARCH=mipsel_24kc, or ARCH=all)
ARCH ?= mipsel_24kc
.PHONY: ipk cross test-cross
ipk:
	VERSION=$(VERSION) scripts/ipk.sh $(ARCH)

## cross: static, stripped mcpagent and mcpgw for mips, mipsle, arm, arm64, amd64 in dist/cross
cross:
	VERSION=$(VERSION) scripts/cross.sh build

## test-cross: the unit tests under qemu-user on mips, mipsle, arm and arm64
test-cross:
	scripts/cross.sh test

clean:
	rm -rf bin dist

help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)
