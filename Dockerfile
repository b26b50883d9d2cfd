# mlserver-mme: SageMaker multi-model endpoints on MLServer.
#
#   docker build -t mlserver-mme .
#   docker run -p 8080:8080 mlserver-mme                       # serves the bundled example models
#   docker run -p 8080:8080 -e MLSERVER_MME_MODEL_PREFIX=s3://bucket/models/ mlserver-mme
#
# SageMaker starts containers as `docker run IMAGE serve`; the label below lets it host the image as a
# multi-model container (it then sets SAGEMAKER_MULTI_MODEL=true and drives the /models routes).
# Without a registry, deploy/build-image.sh builds the base with debootstrap and the image with podman.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

LABEL com.amazonaws.sagemaker.capabilities.multi-models=true \
      org.opencontainers.image.title="mlserver-mme" \
      org.opencontainers.image.description="SageMaker multi-model endpoints on MLServer"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    MLSERVER_HOST=0.0.0.0 \
    MLSERVER_HTTP_PORT=8080 \
    MLSERVER_MME_CACHE_DIR=/var/cache/mlserver-mme \
    MLSERVER_MME_SHARDS=auto

# A CA bundle for pip behind an HTTPS-intercepting proxy (deploy/build-image.sh mounts the host's).
ARG PIP_CERT=

# HAProxy fronts the shards of `mlserver-mme serve` (one per CPU, MLSERVER_MME_SHARDS=auto).
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mlserver-mme
COPY pyproject.toml README.md ./
COPY mlserver_mme ./mlserver_mme
# xgboost-cpu (a dependency) leaves out xgboost's ~470 MB of CUDA libraries.
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir . \
 && rm -rf /opt/mlserver-mme/mlserver_mme /root/.cache \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mme \
 && mkdir -p /var/cache/mlserver-mme /opt/ml/models \
 && chown mme /var/cache/mlserver-mme
COPY model-settings ./model-settings
COPY examples/models ./examples/models
COPY deploy/entrypoint.sh /usr/local/bin/mlserver-mme-entrypoint

USER mme
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('MLSERVER_HTTP_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["/usr/local/bin/mlserver-mme-entrypoint"]
CMD ["serve"]
