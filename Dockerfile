# syntax=docker/dockerfile:1
# The akisnap image the Helm chart runs (helm/akisnap, image.repository).
#   docker build -t ghcr.io/akidb/akisnap:0.1.0 .
#   docker run --rm -p 9108:9108 -e AKISNAP_KAFKA_BOOTSTRAP=broker:9092 ghcr.io/akidb/akisnap:0.1.0
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the package and every dependency as wheels -------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only what the wheel is built from, and the lock (constraints.txt):
# the image gets exactly the versions CI tested.
COPY . .
RUN pip wheel --wheel-dir /wheels -c constraints.txt .

# --- runtime: installed from those wheels only, run as a non-root user ---------------------
FROM ${PYTHON_IMAGE}
ARG UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TMPDIR=/tmp \
    AKISNAP_TMP_DIR=/tmp
RUN groupadd --gid "${UID}" akisnap \
    && useradd --uid "${UID}" --gid "${UID}" --home-dir /var/lib/akisnap \
        --no-create-home --shell /usr/sbin/nologin akisnap \
    && install -d -o "${UID}" -g "${UID}" -m 0750 /var/lib/akisnap
# No index: exactly the wheels built above, nothing fetched at this stage.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels akidb-snapshotter \
    && akisnap --help >/dev/null
WORKDIR /var/lib/akisnap
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER ${UID}:${UID}
# /metrics, /healthz, /readyz (AKISNAP_METRICS_PORT).
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AKISNAP_METRICS_PORT', '9108'), timeout=4)"]
ENTRYPOINT ["akisnap"]
CMD ["run"]
