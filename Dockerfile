# syntax=docker/dockerfile:1
# One Dockerfile, two images:
#   GPU (default): docker build -t clipsearch:gpu .            CUDA runtime base, torch CUDA build, faiss-gpu
#   CPU:           docker build --build-arg VARIANT=cpu -t clipsearch:cpu .   slim base, torch CPU build, faiss-cpu,
#                  ONNX Runtime (the model runs on it: CLIPSEARCH_BACKEND=auto)
# Where no image registry or PyTorch index can be reached, the bases and the torch source are build
# arguments (scripts/compose-smoke builds the CPU image this way; docs/deployment.md says why):
#   --build-arg PYTHON_IMAGE=localhost/clipsearch-base:bookworm      a local Debian + python3 base
#   --build-arg TORCH_INDEX=pypi --build-arg TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1"
#   --build-arg PIP_OPTIONS="--no-index --find-links /wheelhouse"   (a wheel folder mounted with -v)
#   --build-arg BUILD_PACKAGES=""                                     no compilers: every package has a wheel
ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- bases: what the final image runs on -------------------------------------------------
FROM ${CUDA_IMAGE} AS base-gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* && ln -sf /usr/bin/python3 /usr/local/bin/python
ENV EXTRAS=gpu DEFAULT_TORCH_INDEX=https://download.pytorch.org/whl/cu128

FROM ${PYTHON_IMAGE} AS base-cpu
ENV EXTRAS=cpu,onnx DEFAULT_TORCH_INDEX=https://download.pytorch.org/whl/cpu

FROM base-${VARIANT} AS base

# ---- builder: the virtual environment, with build tools that stay behind ---------------------
FROM base AS builder
# Build tools, in case a dependency has no wheel for the platform.
ARG BUILD_PACKAGES="build-essential python3-dev"
# Where torch comes from: "default" (PyTorch's index for the variant), "pypi", or an index URL.
ARG TORCH_INDEX=default
ARG TORCH_PACKAGES="torch torchvision"
# Extra pip options for every install (a CA bundle, local wheel folders).
ARG PIP_OPTIONS=""
RUN if [ -n "$BUILD_PACKAGES" ] && command -v apt-get >/dev/null; then apt-get update \
        && apt-get install -y --no-install-recommends $BUILD_PACKAGES && rm -rf /var/lib/apt/lists/*; fi
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN case "$TORCH_INDEX" in \
        default) index="--index-url $DEFAULT_TORCH_INDEX" ;; \
        pypi) index="" ;; \
        *) index="--index-url $TORCH_INDEX" ;; \
    esac \
    && pip install $PIP_OPTIONS $index $TORCH_PACKAGES
COPY pyproject.toml README.md ./src/
COPY clipsearch ./src/clipsearch
COPY app ./src/app
COPY indexer ./src/indexer
RUN pip install $PIP_OPTIONS "./src[${EXTRAS},caption,multilingual,vqa,video,audio,demo]"
# Text in images (the [ocr] extra: PP-OCR on ONNX Runtime, its models inside the rapidocr wheel), with
# OpenCV's headless build in place of the opencv-python that rapidocr asks for: the server draws no
# windows, and the headless build needs no X11 or OpenGL libraries (measured: 173 MB installed
# against 288 MB).
RUN pip install $PIP_OPTIONS --no-deps "rapidocr-onnxruntime>=1.4.4,<1.5" \
    && pip install $PIP_OPTIONS opencv-python-headless pyclipper shapely pyyaml six wordninja onnxruntime

# ---- runtime: the environment and a non-root user, nothing else ------------------------------
FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 clipsearch \
    && mkdir -p /cache /bundle /data && chown clipsearch:clipsearch /cache /bundle /data
USER clipsearch
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    CLIPSEARCH_ONNX_CACHE=/cache/onnx \
    CLIPSEARCH_BUNDLE_PATH=/bundle/current \
    CLIPSEARCH_HOST=0.0.0.0 \
    CLIPSEARCH_PORT=8000
VOLUME ["/cache"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]
CMD ["python", "-m", "app"]
