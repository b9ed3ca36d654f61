# syntax=docker/dockerfile:1
# EmbeddingPredictor (predictors/embedding.py): `python -m ragserve serve embedding`.
#   docker build -f docker/embedding.Dockerfile -t ragserve/embedding:0.1.0 .
# Build args: WITH_MODELS=true bakes all-MiniLM-L6-v2 in (dev clusters);
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (with a CUDA TORCH_SPEC)
# gives the embedding-cuda image that components/gpu-timeslice runs.
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
# caches live under ~/.cache: the manifests mount an emptyDir there (read-only root filesystem)
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/ragserve \
    XDG_CACHE_HOME=/home/ragserve/.cache \
    HF_HOME=/home/ragserve/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RAGSERVE_EMBEDDING_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/ragserve
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "ragserve", "serve", "embedding"]
