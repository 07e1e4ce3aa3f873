# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target operator -t grpo-operator:0.1.0 .   (Kopf operator; no torch)
#   docker build --target trainer  -t grpo-trainer:0.1.0 .    (CUDA torch, transformers, peft, trl, dspy)
# The inference pod runs the upstream vLLM image (vllm/vllm-openai), overridable per job.
# Both images run as a non-root user with a read-only root filesystem in mind: every
# writable path (HOME, caches) points under /tmp, which the pods mount as emptyDir.

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
# PyPI's torch wheel for Linux carries its CUDA runtime (nvidia-* wheels); the
# driver comes from the node through the NVIDIA container runtime.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-compile -c requirements/constraints.txt ".[trainer]"

FROM ${PYTHON_IMAGE} AS trainer
COPY --from=trainer-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    TRITON_CACHE_DIR=/tmp/triton \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    TOKENIZERS_PARALLELISM=false
USER 1000:1000
EXPOSE 9400
ENTRYPOINT ["grpo-trainer"]
