# lingua-edit: API and GPU worker image (CUDA runtime, non-root).
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# CUDA build of torch first (the default index ships a CPU-only or different-CUDA wheel).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
RUN pip install --upgrade pip && pip install --index-url ${TORCH_INDEX} "torch>=2.3"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY core ./core
COPY worker ./worker
COPY migrations ./migrations
COPY clients ./clients
# Installed as a wheel (the migrations ship inside it). INSTALL_DEMO=1 adds the bundled demo model (about
# 0.5 GB of GGUF parts) and the light client `lingua-edit demo` uses.
ARG INSTALL_DEMO=0
RUN if [ "$INSTALL_DEMO" = "1" ]; then pip install ./clients/python ".[demo]"; else pip install .; fi \
 && rm -rf /app/app /app/core /app/worker /app/migrations /app/clients

RUN useradd --create-home --uid 10001 lingua && mkdir -p /data && chown lingua:lingua /data
USER lingua
ENV LINGUA_EDIT_DATA_DIR=/data \
    LINGUA_EDIT_CACHE=/data/cache \
    LINGUA_EDIT_LOG_FORMAT=json \
    HF_HOME=/data/hf

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --retries=5 CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["lingua-edit", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
