# syntax=docker/dockerfile:1
# GenerationPredictor on NVIDIA GPUs with vLLM: `python -m ragserve serve generation`.
#   docker build -f docker/generation-cuda.Dockerfile -t ragserve/generation-cuda:0.1.0 .
# No CUDA base image is needed: the torch wheels vLLM pins carry the CUDA
# runtime, and the NVIDIA container toolkit mounts the driver.
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_SPEC=
ARG TORCH_INDEX_URL=
ARG RAGSERVE_EXTRAS=vllm
ARG EXTRA_PACKAGES=vllm==0.33.0
ARG WITH_MODELS=false
COPY . /src
RUN sh /src/docker/build-venv.sh

FROM ${PYTHON_IMAGE}
# Triton (under vLLM) compiles a small C launcher at first model load and
# fails without a C compiler: gcc + libc headers are a *runtime* dependency of
# this one image -- the only exception to "no compilers in the final stage".
RUN apt-get update \
 && apt-get install --yes --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 ragserve \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/ragserve --shell /usr/sbin/nologin ragserve
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/ragserve \
    XDG_CACHE_HOME=/home/ragserve/.cache \
    HF_HOME=/home/ragserve/.cache/huggingface \
    TRITON_CACHE_DIR=/home/ragserve/.cache/triton \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RAGSERVE_GENERATION_BACKEND=vllm \
    RAGSERVE_GENERATION_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/ragserve
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "ragserve", "serve", "generation"]
