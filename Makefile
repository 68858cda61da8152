# Developer tasks. Each is also runnable without make: see the commands.
# Tools are pinned in tools/go.mod and run with `go tool`, so nothing needs
# installing beyond Go.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test
TOOL := go tool -modfile=tools/go.mod

.PHONY: generate lint test bench ci breaking-baseline

## generate: regenerate gen/, the descriptors reflection serves (with the
## proto's comments), the Python stubs (with Debian's protobuf-compiler and
## protobuf-compiler-grpc) and the TypeScript stubs (with the pinned
## protoc-gen-es of clients/typescript) from proto/
generate:
	$(TOOL) buf generate
	$(TOOL) buf build --exclude-imports -o server/descriptor.binpb
	$(TOOL) buf generate --template buf.gen.python.yaml
	cd clients/typescript && npm ci --no-audit --no-fund
	$(TOOL) buf generate --template buf.gen.ts.yaml

## lint: gofmt, go vet, staticcheck, buf lint/format/breaking
lint:
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	go vet ./...
	$(TOOL) staticcheck ./...
	$(TOOL) buf lint
	$(TOOL) buf format --diff --exit-code
	$(TOOL) buf breaking --against proto/breaking-baseline.binpb

## test: the whole test suite with the race detector (the README's command)
test:
	go test -race ./...
	cd upstream/sdkcompat && go test ./...

## bench: relay benchmark (sizes × concurrency × paths, against a reverse
## proxy; see bench/README.md), memory targets and Go benchmarks
bench:
	go run ./bench -runs 5
	go run ./bench/memory
	go test ./service/ ./upstream/ ./server/ ./client/ -run '^$$' -bench . -benchmem -count 5

## ci: what CI runs, from a clean clone
ci:
	.ci/run

## breaking-baseline: record the current API as the one `buf breaking` guards
## (only when releasing a new contract on purpose)
breaking-baseline:
	$(TOOL) buf build --exclude-source-info -o proto/breaking-baseline.binpb
