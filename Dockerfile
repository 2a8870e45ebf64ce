# Runs the main job (`make run`) on the bundled sample data.
# CPU base by default; for CUDA build with e.g.
#   docker build --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 .
# (a CUDA base must provide python3.11 with venv). Installs exactly as the README does: `make`.
ARG BASE=python:3.11-slim
FROM ${BASE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends git make \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 nectar
USER nectar
WORKDIR /home/nectar/app
COPY --chown=nectar:nectar . .

RUN make install
CMD ["make", "run"]
