# modserve image: CUDA runtime + Python 3.11 + modserve with Ray Serve.
# The same image runs single-process (`modserve serve`), under `serve run`, and as every
# KubeRay pod of the Helm chart. The default model is baked in at /app/model_repo; mount a
# volume over it (or set model.volume in the chart) to serve your own.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev build-essential wget \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv

WORKDIR /app
# CUDA build of the pinned torch (the CPU wheel is what `make` installs on dev machines).
RUN pip install --upgrade pip && pip install torch==2.13.0
COPY pyproject.toml README.md Makefile ./
COPY modserve ./modserve
COPY serving ./serving
COPY kernels ./kernels
COPY training ./training
COPY benchmarks ./benchmarks
COPY proto ./proto
RUN pip install -e '.[ray]' && python -m serving.rpc.protogen
COPY model_repo ./model_repo

EXPOSE 8000 8001
ENV MODSERVE_MODEL_REPO=/app/model_repo MODSERVE_HOST=0.0.0.0
CMD ["modserve", "serve"]
