# Runs the pipeline flow once on the bundled sample data (`make flow`).
#
#   docker build -t nectargan .
#   docker run --rm nectargan                  # CPU
#   docker run --rm --gpus all nectargan       # GPU: the PyPI torch wheel carries its CUDA libraries
#
# BASE may be any Debian/Ubuntu image that has python3.11 with venv (e.g. a CUDA base with
# Python 3.11 added). It installs exactly as the README's commands do: through `make`.
ARG BASE=python:3.11-slim
FROM ${BASE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends git make \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 nectar
USER nectar
WORKDIR /home/nectar/app
COPY --chown=nectar:nectar . .

ENV PREFECT_SERVER_ANALYTICS_ENABLED=false
RUN make install
# The team stack (team/compose.yaml) runs mlflow, prefect and the worker from this image.
ENV PATH=/home/nectar/app/.venv/bin:$PATH
CMD ["make", "flow"]
