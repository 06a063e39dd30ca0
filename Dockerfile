# The Kappa pipeline image: processors, sink service and CLI (`kappa ...`).
FROM python:3.11-slim-bookworm
WORKDIR /app
RUN apt-get update -q && apt-get install -y -q --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY kappa ./kappa
COPY schemas ./schemas
COPY producers ./producers
COPY stream_processors ./stream_processors
COPY sinks ./sinks
COPY deploy ./deploy
COPY examples ./examples
RUN pip install --no-cache-dir .
ENV KAPPA_HOME=/data
# the pipeline every command runs; mount another project directory and point this at it
ENV KAPPA_PIPELINE=/app/examples/ecommerce
VOLUME /data
ENTRYPOINT ["kappa"]
CMD ["status"]
