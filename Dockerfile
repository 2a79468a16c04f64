# modserve image: CUDA runtime + Python 3.11 + modserve with Ray Serve.
# The same image runs single-process (`modserve serve`), under `serve run`, and as every
# KubeRay pod of the Helm chart. The default model is baked in at /app/model_repo; mount a
# volume over it (or set model.volume in the chart) to serve your own.
#
# Build and push (the chart's image.repository / image.tag name what you pushed):
#   docker build -t ghcr.io/<org>/modserve:0.1.0 .
#   docker push ghcr.io/<org>/modserve:0.1.0
#   docker run --gpus all -p 8000:8000 -p 8001:8001 ghcr.io/<org>/modserve:0.1.0

# --- build stage: compilers and pip caches stay here -------------------------------------
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev build-essential \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
WORKDIR /app
# CUDA build of the pinned torch (the CPU wheel is what `make` installs on dev machines);
# Ray pinned to the chart's rayVersion (helm/modserve/values.yaml): the pods' Ray must match.
RUN pip install --upgrade pip && pip install torch==2.13.0 'ray[serve]==2.60.0'
COPY pyproject.toml README.md LICENSE ./
COPY modserve ./modserve
COPY serving ./serving
COPY kernels ./kernels
COPY training ./training
COPY benchmarks ./benchmarks
COPY proto ./proto
# dependencies, then the gRPC code generated into serving/_proto, then the package with it
RUN pip install '.[ray]' 'ray[serve]==2.60.0' && python -m serving.rpc.protogen \
    && pip install --no-deps --force-reinstall .

# --- runtime stage: no build tools ------------------------------------------------------
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    HOME=/home/modserve MODSERVE_MODEL_REPO=/app/model_repo MODSERVE_HOST=0.0.0.0
# python3.11-dev + gcc only: Triton compiles its small CUDA launcher at first use (GPU head
# kernel); nothing else is compiled at run time on a GPU.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin modserve
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=modserve:modserve model_repo ./model_repo
USER modserve

EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2).status != 200)"
CMD ["modserve", "serve"]
