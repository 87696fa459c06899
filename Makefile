# depenc: `make help` lists the targets. Everything runs inside .venv, created by `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXP ?= depenc_small
ARGS ?=
RESUME ?=
RUNS ?=
NAME ?=
JOBS ?=
GPUS ?=
EXPS ?= baseline_matched_small depenc_small
SEEDS ?= 1 2 3
GRID ?=
GROUP ?= small
# LitData (the token pipeline) declares torchvision, whose PyPI build does not load beside the CPU build of
# torch 2.13.0 (and is not needed for tokens): installed without it; its other needs are in pyproject.toml
LITDATA_VERSION := 0.2.76
EXPS_DASH ?=
CKPT ?=
OUT ?=
export WANDB_SILENT := true

.DEFAULT_GOAL := help
.PHONY: help setup train test test-all clean sweep compare curves notebook bench dashboard export gpu-check data

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'
	@echo ""
	@echo "  make train EXP=depenc_small ARGS=\"trainer.max_steps=50 model.n_layer=2\""
	@echo "  make train RESUME=runs/depenc_small/<run_id>      (continue a run)"

setup: $(VENV)/.installed ## Create .venv from pyproject.toml (torch==2.13.0 first)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "litdata==$(LITDATA_VERSION)"
	touch $@

train: setup ## Train EXP (default depenc_small); ARGS="key=value ..."; RESUME=<run folder> continues a run
	$(PY) -m depenc.train $(if $(RESUME),--resume $(RESUME),$(EXP)) $(ARGS)

test: setup ## Fast test suite (what CI runs), on 2 worker processes (one per core; a test file stays on one worker)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-all: setup ## All tests, slow ones included (DDP, kill-and-resume, real corpora)
	$(PY) -m pytest -q -n 2 --dist loadfile -m ""

data: setup ## Build (or find) the data cache of EXP: tokens, tokens/s, peak RSS; ARGS="key=value ... --rebuild"
	$(PY) -m depenc.data build $(EXP) $(ARGS)

sweep: setup ## Train every experiment of EXPS with every seed of SEEDS (x GRID="key=v1,v2 ..."), one after another (ARGS for all; JOBS=N / GPUS=0,1,.. in parallel)
	$(PY) -m depenc.sweep --exps $(EXPS) --seeds $(SEEDS) $(if $(GRID),--grid $(GRID)) $(if $(JOBS),--jobs $(JOBS)) $(if $(GPUS),--gpus $(GPUS)) -- $(ARGS)

compare: setup ## Report (HTML + PNG + Markdown) in reports/<NAME>/ over the runs of EXPS (seeds aggregated) or RUNS="run folders"
	$(PY) -m depenc.compare $(if $(RUNS),--runs $(RUNS),--exps $(EXPS)) $(if $(NAME),--name $(NAME))

# make curves: the regime experiments unless EXPS is given on the command line
CURVE_EXPS := $(if $(filter command line environment,$(origin EXPS)),$(EXPS),regimes/matched regimes/alibi regimes/depenc regimes/oracle)

curves: setup ## Learning curves (excess vs training tokens) and depth generalisation over grid runs: reports/<NAME or regimes>/summary.md + PNGs (EXPS: default the four regimes/*)
	$(PY) -m depenc.curves --exps $(CURVE_EXPS) $(if $(NAME),--name $(NAME))

notebook: setup ## Open notebooks/01-analyze-generations.ipynb in JupyterLab (needs: .venv/bin/pip install -e ".[notebook]")
	@$(PY) -c "import jupyterlab" 2>/dev/null || { echo 'JupyterLab is not installed: $(PY) -m pip install -e ".[notebook]"'; exit 1; }
	$(PY) -m jupyter lab notebooks/01-analyze-generations.ipynb

bench: setup ## Training tokens/s and peak memory (+ memory/baseline): baseline vs DepEnc vs GPT-2 at T=128..2048 (ARGS="--preset gpt2-small --precision bf16") -> reports/bench/
	$(PY) -m depenc.bench --out reports/bench $(ARGS)

dashboard: setup ## W&B report for the experiments *_GROUP (default small): reports/dashboard-GROUP.json offline; ARGS=--publish saves it online (needs a W&B key)
	$(PY) -m depenc.dashboard --group $(GROUP) $(if $(EXPS_DASH),--exps $(EXPS_DASH)) $(ARGS)

export: setup ## transformers folder from a checkpoint: make export CKPT=runs/<exp>/<run_id>/checkpoints/best.ckpt OUT=exports/<name>
	$(PY) -m depenc.export hf --ckpt $(CKPT) --out $(OUT) $(ARGS)

gpu-check: ## The prepared GPU check (Flex vs SDPA, bf16+compile loss curves, bench at T=1024/2048) -> $OUT or reports/gpu_check/
	bash scripts/gpu_check.sh $(ARGS)

clean: ## Remove caches and build artefacts (keeps runs/ and .venv)
	rm -rf .cache build src/*.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
