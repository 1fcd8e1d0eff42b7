# The vididi image: what every rule runs in under `snakemake --use-singularity` (config key
# `container`). It holds the `vididi` package with its pinned dependencies (and the test tools),
# snakemake, ffmpeg and bsdtar; the workflow itself and the data come from the working directory.
# Build and use: docs/deployment.md.
#   make wheelhouse && make image                          (docker or podman, whichever is present)
#   make base-debian && make image BASE=vididi-base:bookworm     (no registry reachable)
#
# Base image: python:3.11-slim-bookworm by default, not nvidia/cuda or pytorch/pytorch. The PyPI wheels
# of torch 2.14.1 / torchvision 0.29.1 carry their own CUDA 13 runtime (cuBLAS, cuDNN, NCCL, ... as
# the nvidia-* wheels pinned in constraints.txt), so only the host's NVIDIA driver (>= 580 for CUDA 13)
# comes from outside: `apptainer exec --nv` / `docker run --gpus all` mount it. A CUDA base image would
# add a second, unused CUDA toolkit of several GB. Any Debian bookworm with python3 and python3-venv
# works as BASE (Python 3.11 either way, the interpreter constraints.txt was resolved with).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

LABEL org.opencontainers.image.title="vididi" \
      org.opencontainers.image.description="ViDiDi: Video Time-Differentiation for Instance Discrimination, end-to-end pipeline" \
      org.opencontainers.image.licenses="MIT"

# ffmpeg decodes the videos; libarchive-tools provides bsdtar, which unpacks the RAR archives of
# UCF101 / HMDB51 and the encrypted THUMOS14 zip. A base that already has both (`make base-debian`
# bootstraps them in) skips apt, so the build needs no network at all. The Debian packages are not
# pinned to exact versions (DL3008): bookworm only receives security fixes, and its mirrors drop a
# superseded version as soon as a fix is released. The same layer adds the non-root user (uid 1000;
# Apptainer runs as the calling user anyway) and the working directory /work.
# hadolint ignore=DL3008
RUN if ! command -v ffmpeg >/dev/null || ! command -v bsdtar >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends ffmpeg libarchive-tools \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --create-home --uid 1000 --shell /bin/bash vididi \
    && mkdir /work \
    && chown vididi:vididi /work

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# Third-party dependencies in a layer of their own (several GB, mostly CUDA libraries), rebuilt only
# when pyproject.toml or constraints.txt change: the [project] dependencies and the test extra, each at
# its version in constraints.txt, from the wheelhouse `make wheelhouse` downloaded on the host. The
# wheelhouse is bind-mounted for this one step, so the image never holds a second copy of the wheels,
# and the build needs no package index (and no TLS to one).
COPY pyproject.toml constraints.txt /opt/vididi/
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse -c /opt/vididi/constraints.txt -r /wheelhouse/requirements.txt

# The package (a small layer), with its data files (config schema, dataset registry); README.md is
# the package's long description. The checks after the install fail the build if a dependency is
# inconsistent or a data file (schema, dataset registry) is missing.
# The workflow does not run this copy: under --use-singularity every rule runs the checkout's code with
# this environment (workflow/rules/common.smk, _python()), after comparing constraints.txt.
COPY README.md /opt/vididi/
COPY vididi /opt/vididi/vididi
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse --no-deps /opt/vididi \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "from vididi.config import schema; from vididi.data.download import load_registry; schema(); load_registry()" \
    && /opt/venv/bin/vididi --help > /dev/null \
    && /opt/venv/bin/snakemake --version

# numeric, so the host and Kubernetes' runAsNonRoot check can resolve it without /etc/passwd
USER 1000:1000
WORKDIR /work
CMD ["vididi", "--help"]
