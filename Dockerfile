# syntax=docker/dockerfile:1
# ctd: multi-stage build. The build stage makes a venv with the CPU-only stack, the runtime
# stage copies it onto the same base image and runs `ctd run` as a non-root user.
#
#   docker build -t ctd .
#   docker run --stop-timeout 60 -e CTD_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 -p 9108:9108 ctd
#
# Build arguments:
#   BASE_IMAGE        a Python 3.11 image with `python3 -m venv` (Debian-like: useradd)
#   TORCH_VERSION     must equal constraints.txt's pin (the install fails otherwise)
#   TORCH_INDEX_URL   where the CPU torch wheel comes from (PyPI's Linux torch is the CUDA
#                     build, several GB); empty: PyPI / find-links only
#   TORCH_FIND_LINKS  optional folder (or URL) of wheels, e.g. a mounted wheel cache:
#                     podman build -v /opt/wheels:/wheels:ro --build-arg TORCH_FIND_LINKS=/wheels \
#                       --build-arg TORCH_INDEX_URL= .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python3 -m venv /opt/ctd
COPY constraints.txt pyproject.toml ./
# torch first, alone, from the CPU index (or the given wheel folder): every later install
# finds it satisfied and never looks for a CUDA build.
RUN /opt/ctd/bin/pip install -c constraints.txt \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} \
        "torch==${TORCH_VERSION}"
# Then the dependencies declared in pyproject.toml and the s3 extra (a fleet's registry
# on object storage), so a source change re-runs only the last install below.
RUN /opt/ctd/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3']))" > /tmp/requirements.txt \
    && /opt/ctd/bin/pip install -c constraints.txt -r /tmp/requirements.txt \
    && /opt/ctd/bin/python -c "import sys, importlib.metadata as m; bad = sorted({d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].lower().startswith('nvidia')}); sys.exit(f'CUDA packages in a CPU image: {bad}' if bad else 0)"
COPY . .
RUN /opt/ctd/bin/pip install --no-deps -c constraints.txt . \
    && /opt/ctd/bin/pip check

FROM ${BASE_IMAGE}
# Numeric uid/gid so Kubernetes' runAsNonRoot can verify the user without a runAsUser.
RUN groupadd --system --gid 10001 ctd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ctd --create-home \
        --shell /usr/sbin/nologin ctd
COPY --from=build /opt/ctd /opt/ctd
# CTD_DATA_DIR (bar store + registry) is the only place ctd writes, with /tmp (worker
# processes' sockets); the image runs with a read-only root file system.
ENV PATH=/opt/ctd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CTD_DATA_DIR=/var/lib/ctd \
    CTD_HTTP_HOST=0.0.0.0 \
    CTD_HTTP_PORT=9108 \
    CTD_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/ctd
VOLUME ["/var/lib/ctd"]
EXPOSE 9108
# Slim images have no curl: the venv's python asks /healthz (process alive; /readyz is for
# load balancers and orchestrators, it is 503 while the broker is unreachable).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CTD_HTTP_PORT', '9108'), timeout=2)"]
# SIGTERM: intake stops, running training may finish for CTD_SHUTDOWN_GRACE_SECONDS (30),
# exit 0. Give the container longer than that to stop (docker: --stop-timeout 60).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ctd"]
CMD ["run"]
