# syntax=docker/dockerfile:1
# Ingestion (pipelines/, `ragserve ingest`): run as the Job in inferenceservices/jobs.
#   docker build -f docker/ingest.Dockerfile -t ragserve/ingest:0.1.0 .
# Not a server, so no RAGSERVE_*_HOST. The `pipelines` extra (kfp) lets the same
# image run as the ingestion step of the Kubeflow pipeline.
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG RAGSERVE_EXTRAS=pipelines
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
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/ragserve
ENTRYPOINT ["python", "-m", "ragserve", "ingest"]
