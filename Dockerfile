# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target operator -t grpo-operator:0.1.0 .   (Kopf operator; no torch)
#   docker build --target trainer  -t grpo-trainer:0.1.0 .    (CUDA torch, transformers, peft, trl, dspy)
#     CUDA 13 by default: the GPU nodes need NVIDIA driver >= 580; for older drivers add
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (or cu128), see below.
# The inference pod runs the upstream vLLM image (vllm/vllm-openai), overridable per job.
# Both images run as a non-root user with a read-only root filesystem in mind: HOME and
# caches point under /tmp by default, and the operator's pods point them at their volumes.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------- sources
FROM ${PYTHON_IMAGE} AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY operator ./operator
COPY trainer ./trainer

# ---------------------------------------------------------------- operator
FROM source AS operator-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-compile -c requirements/constraints.txt ".[operator]"

FROM ${PYTHON_IMAGE} AS operator
COPY --from=operator-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["grpo-operator"]

# ---------------------------------------------------------------- trainer
FROM source AS trainer-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Where torch and its CUDA runtime come from. The torch wheel carries its CUDA runtime
# (nvidia-* wheels); only the driver comes from the node, through the NVIDIA container
# runtime, and it must be new enough for that runtime:
#   https://pypi.org/simple                 (default) CUDA 13 build: NVIDIA driver >= 580 (R580)
#   https://download.pytorch.org/whl/cu128  CUDA 12.8: driver >= 570 (>= 525 in CUDA's minor-version compatibility mode)
#   https://download.pytorch.org/whl/cu126  CUDA 12.6: driver >= 560 (>= 525 likewise); for R535-R550 fleets
#   docker build --target trainer --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
ARG TORCH_INDEX_URL=https://pypi.org/simple
# The lock (requirements/constraints.txt) pins torch==X and the CUDA 13 runtime wheels PyPI's
# torch X needs. torch first, alone, from the chosen index, at the lock's version (an index's
# build is X+cu128: PEP 440 ignores a local label, so the lock's ==X accepts it); from PyPI
# with the lock's CUDA pins too, so the default image is the lock exactly. Then the rest from
# PyPI with the lock minus the CUDA stack (whose versions the installed torch's own pins
# decided) plus the installed torch's exact version, so pip keeps that build.
RUN set -eu; \
    stack='^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)=='; \
    grep -E "$stack" requirements/constraints.txt > /tmp/cuda-stack.txt; \
    grep -vE "$stack" requirements/constraints.txt > /tmp/constraints.txt; \
    pinned=""; \
    if [ "${TORCH_INDEX_URL}" = "https://pypi.org/simple" ]; then pinned="-c /tmp/cuda-stack.txt"; fi; \
    python -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-compile --index-url "${TORCH_INDEX_URL}" $pinned "$(grep -E '^torch==' /tmp/cuda-stack.txt)"; \
    /opt/venv/bin/python -c 'from importlib.metadata import version; print("torch==" + version("torch"))' >> /tmp/constraints.txt; \
    /opt/venv/bin/pip install --no-compile -c /tmp/constraints.txt ".[trainer]"

FROM ${PYTHON_IMAGE} AS trainer
# A C compiler for Triton: on CUDA, TRL's chunked log-prob kernel is a Triton kernel, and
# Triton compiles a small C launcher with the system compiler at its first launch ("Failed
# to find C compiler" without one). gcc + libc6-dev only; Python's headers are in the base image.
# git and ssh for spec.code's git sources (the trainer pod's init containers run this image).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=trainer-build /opt/venv /opt/venv
# HOME and the caches are writable places for a plain `docker run`; the operator's pods set
# their own (the compiled-kernel and model caches on the job's volume, so a restarted
# attempt reuses them; grpo_operator.resolve.cache_env).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    CC=gcc \
    TRITON_CACHE_DIR=/tmp/triton \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    TOKENIZERS_PARALLELISM=false
USER 1000:1000
EXPOSE 9400
ENTRYPOINT ["grpo-trainer"]
