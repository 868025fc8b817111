# llmserve images, built by `make image`:
#   --target gpu      runtime and builder (CUDA build of torch; the NVIDIA driver comes from
#                     the node through the NVIDIA container toolkit)
#   --target gateway  the gateway (CPU build of torch, which the shared package imports)
# Python is installed with the Makefile's own `make venv`, the commands `make setup` runs and
# the tests exercise, so this file cannot drift from them (tests/deploy/test_dockerfile.py).
#
# Base: python:3.11-slim rather than nvidia/cuda:*-runtime. torch's CUDA wheels carry the CUDA
# runtime libraries they need (cudart, cuBLAS, cuDNN, NCCL as nvidia-* wheels) and Triton its
# own ptxas, so a CUDA runtime base would add a second, unused copy (~3 GB) and a Python other
# than the 3.11 the project tests with.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends make=4.3-4.1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/llmserve
COPY pyproject.toml Makefile README.md ./
COPY llmserve/ llmserve/
COPY builder_service/ builder_service/
COPY runtime_service/ runtime_service/
COPY gateway/ gateway/

FROM build-base AS build-gpu
RUN make venv PYTHON=python3.11 TORCH_SPEC=torch==2.13.0 PACKAGE_SPEC=. \
 # The model of the chart's defaults, at a path that does not depend on Python's version.
 && mkdir -p models \
 && ln -s "$(.venv/bin/python -c 'from llmserve.testing import smollm2; print(smollm2.gguf_path())')" \
      models/SmolLM2-135M-Instruct.Q4_1.gguf

FROM build-base AS build-cpu
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN make venv PYTHON=python3.11 TORCH_SPEC=torch==2.13.0+cpu PACKAGE_SPEC=.

FROM ${PYTHON_IMAGE} AS base
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp llmserve \
 && mkdir -p /var/lib/llmserve/store /var/cache/llmserve \
 && chown llmserve:llmserve /var/lib/llmserve/store /var/cache/llmserve
ENV PATH=/opt/llmserve/.venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    LLMSERVE_HOST=0.0.0.0 \
    LLMSERVE_STORE=/var/lib/llmserve/store \
    LLMSERVE_ENGINE_CACHE_DIR=/var/cache/llmserve/engines \
    LLMSERVE_WORK_DIR=/var/cache/llmserve/builder
# The artifact store (local type) and the engine cache / builder scratch space.
VOLUME ["/var/lib/llmserve/store", "/var/cache/llmserve"]
WORKDIR /opt/llmserve
ENTRYPOINT ["llmserve"]
CMD ["--help"]

FROM base AS gateway
COPY --from=build-cpu /opt/llmserve /opt/llmserve
USER 10001:10001
EXPOSE 50051 9401

FROM base AS gpu
COPY --from=build-gpu /opt/llmserve /opt/llmserve
USER 10001:10001
EXPOSE 50052 50053 9402 9403
