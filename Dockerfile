# syntax=docker/dockerfile:1
# Multi-stage: build a venv with the CPU-only stack, copy it into a slim runtime image.
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/ctd
COPY pyproject.toml constraints.txt README.md ./
COPY daemon ./daemon
COPY trainers ./trainers
COPY monitors ./monitors
COPY deploy ./deploy
# torch is pinned to its CPU build (constraints.txt); the CPU index avoids the CUDA wheel.
RUN /opt/ctd/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu \
        -c constraints.txt .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/ctd --create-home ctd
COPY --from=build /opt/ctd /opt/ctd
ENV PATH=/opt/ctd/bin:$PATH \
    CTD_DATA_DIR=/var/lib/ctd \
    CTD_HTTP_HOST=0.0.0.0 \
    CTD_HTTP_PORT=9108 \
    CTD_LOG_FORMAT=json
USER ctd
WORKDIR /var/lib/ctd
VOLUME ["/var/lib/ctd"]
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CTD_HTTP_PORT','9108'), timeout=2)"]
ENTRYPOINT ["ctd"]
CMD ["run"]
