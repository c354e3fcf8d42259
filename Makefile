# shardflow — developer and CI entry points (GNU make).
#
# The repository is a go.work workspace; `go test ./...` does not cross module
# boundaries, so every Go target loops over the workspace's modules.
# A fresh machine needs only Go: `make postgres` installs and starts Postgres
# (Debian packages through apt-get) when there is none.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Directories of the workspace's modules (go.work's `use` list).
MODULES := $(shell go list -f '{{.Dir}}' -m)

# Flags for `go test` in every module but integration.
TEST_FLAGS ?= -race -count=1 -timeout 15m
# Flags for `go test` in the integration module: its suites drive real servers
# end to end and run much faster without the race detector; the code they
# exercise is race-tested by its own module's tests.
INTEGRATION_FLAGS ?= -count=1 -timeout 15m
# Extra arguments for `make run` and `make bench`.
ARGS ?=

# each-module runs the shell command $(2) in every workspace module that has Go
# packages, announcing "==> $(1) <module>", with $$flags set to the module's
# test flags. It stops at the first failure and names the module.
define each-module
	@for dir in $(MODULES); do \
		mod=$${dir#$(CURDIR)/}; \
		flags="$(TEST_FLAGS)"; \
		if [ "$$mod" = integration ]; then flags="$(INTEGRATION_FLAGS)"; fi; \
		if [ -z "$$(cd "$$dir" && go list -e ./... 2>/dev/null)" ]; then \
			echo "==> $(1) $$mod: no packages yet, skipped"; \
			continue; \
		fi; \
		echo "==> $(1) $$mod"; \
		if ! (cd "$$dir" && $(2)); then \
			echo "FAILED: $(1) in module $$mod" >&2; \
			exit 1; \
		fi; \
	done
endef

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

.PHONY: postgres
postgres: ## make sure Postgres answers on 127.0.0.1:5432 (install/start it if needed)
	@bash scripts/ensure-postgres.sh

.PHONY: vet
vet: ## go vet every module
	$(call each-module,go vet,go vet ./...)

.PHONY: test
test: postgres vet ## postgres, vet, then go test every module (TEST_FLAGS / INTEGRATION_FLAGS)
	$(call each-module,go test,go test $$flags ./...)

.PHONY: bench
bench: ## run the benchmark program (integration/cmd/bench)
	cd integration && go run ./cmd/bench $(ARGS)

.PHONY: run
run: postgres ## run the whole stack locally (services/stack)
	cd services && go run ./stack $(ARGS)

.PHONY: build
build: ## build every main package under services/ into bin/
	@mkdir -p bin
	@cd services && mains=$$(go list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./...); \
	if [ -z "$$mains" ]; then echo "==> build: no main packages under services/ yet"; exit 0; fi; \
	for m in $$mains; do echo "==> go build $$m -> bin/$${m##*/}"; done; \
	go build -o $(CURDIR)/bin/ $$mains

.PHONY: fmt
fmt: ## gofmt every module
	$(call each-module,go fmt,go fmt ./...)

.PHONY: tidy
tidy: ## go mod tidy every module, then go work sync
	@for dir in $(MODULES); do \
		echo "==> go mod tidy $${dir#$(CURDIR)/}"; \
		(cd "$$dir" && go mod tidy) || { echo "FAILED: go mod tidy in module $${dir#$(CURDIR)/}" >&2; exit 1; }; \
	done
	@echo "==> go work sync"
	@go work sync
