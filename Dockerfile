# syntax=docker/dockerfile:1
# One Dockerfile, two images:
#   GPU (default): docker build -t clipsearch:gpu .            CUDA runtime base, torch CUDA build, faiss-gpu
#   CPU:           docker build --build-arg VARIANT=cpu -t clipsearch:cpu .   slim base, torch CPU build, faiss-cpu
ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- bases: what the final image runs on -------------------------------------------------
FROM ${CUDA_IMAGE} AS base-gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* && ln -sf /usr/bin/python3 /usr/local/bin/python
ENV FAISS_EXTRA=gpu TORCH_INDEX=https://download.pytorch.org/whl/cu128

FROM ${PYTHON_IMAGE} AS base-cpu
ENV FAISS_EXTRA=cpu TORCH_INDEX=https://download.pytorch.org/whl/cpu

FROM base-${VARIANT} AS base

# ---- builder: the virtual environment, with build tools that stay behind ---------------------
FROM base AS builder
RUN if command -v apt-get >/dev/null; then apt-get update && apt-get install -y --no-install-recommends \
        build-essential python3-dev && rm -rf /var/lib/apt/lists/*; fi
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install torch torchvision --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./src/
COPY clipsearch ./src/clipsearch
COPY app ./src/app
COPY indexer ./src/indexer
RUN pip install "./src[${FAISS_EXTRA},demo]"

# ---- runtime: the environment and a non-root user, nothing else ------------------------------
FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 clipsearch \
    && mkdir -p /cache /bundle /data && chown clipsearch:clipsearch /cache /bundle /data
USER clipsearch
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    CLIPSEARCH_BUNDLE_PATH=/bundle/current \
    CLIPSEARCH_HOST=0.0.0.0 \
    CLIPSEARCH_PORT=8000
VOLUME ["/cache"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status != 200)"]
CMD ["python", "-m", "app"]
