# syntax=docker/dockerfile:1
#
# The one selfjudge image: every stage worker (`worker synthesizer|reasoner|filter|trainer|
# evaluator`) and the loop launcher (`run --config ...`) run from it; compose picks the
# command. Entrypoint: `selfjudge` (through a small wrapper that can claim one GPU per
# replica, see infra/docker/entrypoint.sh).
#
#   GPU image (default): torch's PyPI wheels for Linux bundle the CUDA runtime libraries, so
#     a slim Python base works; the host needs only the NVIDIA driver + container toolkit.
#       docker build -t selfjudge:latest .
#   CPU image (smaller, used by docker-compose.cpu.yml):
#       docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t selfjudge:cpu .
#   GPU image with vLLM (model.backend: vllm), the `gpu` target: the default image + vLLM, whose
#   pins (torch==2.13.0, torchvision==0.28.0 for vllm 0.32.0) match the torch above:
#       docker build --target gpu --build-arg VLLM_VERSION=0.32.0 -t selfjudge:gpu .
#   (the default target is the last stage, `default` = the image without vLLM.)

ARG PYTHON_VERSION=3.11
# Any Debian bookworm image with Python 3.11 as `python` and `pip` (`make compose-test` builds a
# local stand-in, infra/compose-test/python.Dockerfile, where no registry is reachable).
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm
FROM ${BASE_IMAGE} AS app

# torch is installed before the project so that `pip install .` keeps this build of it
# (pyproject only asks for torch>=2.4). torchvision is needed by Qwen2-VL-style processors.
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
# Empty: PyPI (CUDA build). Set to a CPU wheel index for a CPU-only image.
ARG TORCH_INDEX_URL=

# HF_HOME and the GPU lock files live in the `model-cache` volume that all stages share;
# run.work_dir (local scratch of one process) stays inside the container.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    SELFJUDGE_GPU_LOCK_DIR=/cache/gpu-locks \
    SELFJUDGE__RUN__WORK_DIR=/app/work \
    CUDA_DEVICE_ORDER=PCI_BUS_ID

# Non-root user; fixed uid/gid so volume ownership is predictable.
RUN groupadd --system --gid 10001 selfjudge \
 && useradd --system --uid 10001 --gid selfjudge --home-dir /home/selfjudge --create-home \
        --shell /usr/sbin/nologin selfjudge

# 1) torch (large, rarely changes: its own layer).
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}" \
     && pip install --no-deps "torchvision==${TORCHVISION_VERSION}" ; \
    else \
        pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" ; \
    fi

# 2) the project (`pip install .` of a copy kept out of the working directory, so that
#    nothing in /app shadows the installed `selfjudge` package), then the loop configs
#    (compose also mounts ./configs read-only over /app/configs: edits need no rebuild).
WORKDIR /opt/selfjudge-src
COPY pyproject.toml README.md ./
COPY selfjudge ./selfjudge
COPY shared ./shared
COPY services ./services
RUN pip install . \
 && python -I -c "import selfjudge.cli, selfjudge.shared.config, selfjudge.services"

WORKDIR /app
COPY configs ./configs
COPY infra/docker/entrypoint.sh /usr/local/bin/selfjudge-entrypoint

# Folders the user writes to. Named volumes mounted on them start with this ownership.
# (chmod here, not COPY --chmod: that needs BuildKit, and the legacy builder must work too.)
RUN chmod 0755 /usr/local/bin/selfjudge-entrypoint \
 && mkdir -p /app/work /cache/huggingface /cache/gpu-locks \
 && chown -R selfjudge:selfjudge /app/work /cache

# Numeric, so Kubernetes-style "runAsNonRoot" checks can verify it (= selfjudge:selfjudge).
USER 10001:10001

# Workers serve Prometheus metrics here (SELFJUDGE__METRICS__PORT=9100 in compose).
EXPOSE 9100

ENTRYPOINT ["selfjudge-entrypoint"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# `gpu` target: + vLLM. VLLM_VERSION is empty by default, so that a builder that runs every
# stage on the way to the default target (Docker's legacy builder; BuildKit skips this stage)
# installs nothing here (and says so). torch is pinned to the version already installed: a vLLM
# release that wants another torch fails the build instead of swapping torch underneath.
FROM app AS gpu
ARG VLLM_VERSION=
USER root
RUN if [ -z "$VLLM_VERSION" ]; then \
        echo "gpu target: no VLLM_VERSION given, vLLM not installed (--build-arg VLLM_VERSION=0.32.0)" ; \
    else \
        pip install "vllm==${VLLM_VERSION}" "torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')" \
     && python -I -c "import vllm, selfjudge.shared.models.generation.vllm_backend" ; \
    fi
USER 10001:10001

# The default target: the image without vLLM (the stage above adds nothing to it).
FROM app AS default
