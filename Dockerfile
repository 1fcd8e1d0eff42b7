# The vididi image: what every rule runs in under `snakemake --use-singularity` (config key
# `container`). It holds the `vididi` package with its pinned dependencies, snakemake, ffmpeg and
# bsdtar; the workflow itself and the data come from the working directory Snakemake mounts.
# Build (docs/deployment.md):  docker build -t ghcr.io/vididi/vididi:0.1.0 .
#
# Base image: python:3.11-slim-bookworm, not nvidia/cuda or pytorch/pytorch. The PyPI wheels of
# torch 2.14.1 / torchvision 0.29.1 carry their own CUDA 13 runtime (cuBLAS, cuDNN, NCCL, ... as the
# nvidia-* wheels pinned in constraints.txt), so `pip install -c constraints.txt` gives exactly the
# versions the test suite ran with, and only the host's NVIDIA driver (>= 580 for CUDA 13) comes from
# outside: `apptainer exec --nv` / `docker run --gpus all` mount it. A CUDA base image would add a
# second, unused CUDA toolkit of several GB; the pytorch/pytorch images bring a conda Python with
# their own torch build instead of the pinned wheels.
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="vididi" \
      org.opencontainers.image.description="ViDiDi: Video Time-Differentiation for Instance Discrimination, end-to-end pipeline" \
      org.opencontainers.image.licenses="MIT"

# ffmpeg decodes the videos; libarchive-tools provides bsdtar, which unpacks the RAR archives of
# UCF101 / HMDB51 and the encrypted THUMOS14 zip. The Debian packages are not pinned to exact
# versions (DL3008): bookworm only receives security fixes, and its mirrors drop a superseded version
# as soon as a fix is released, so an exact pin would break the build at the next security update.
# The same layer adds the non-root user that runs the pipeline under Docker (Apptainer runs as the
# calling user anyway) and its working directory /work, where `docker run -v "$PWD":/work` mounts.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg libarchive-tools \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash vididi \
    && mkdir /work \
    && chown vididi:vididi /work

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# Third-party dependencies in a layer of their own (several GB, mostly CUDA libraries), rebuilt only
# when pyproject.toml or constraints.txt change, not on every code change: the [project]
# dependencies of pyproject.toml, each at its version in constraints.txt.
COPY pyproject.toml constraints.txt /opt/vididi/
RUN python3 -m venv /opt/venv \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/opt/vididi/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -c /opt/vididi/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package (a small layer), with its data files (config schema, dataset registry); README.md is
# the package's long description. The checks after the install fail the build if a dependency is
# inconsistent or a data file (schema, dataset registry) is missing.
COPY README.md /opt/vididi/
COPY vididi /opt/vididi/vididi
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /opt/vididi \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "from vididi.config import schema; from vididi.data.download import load_registry; schema(); load_registry()" \
    && /opt/venv/bin/vididi --help > /dev/null \
    && /opt/venv/bin/snakemake --version

# numeric, so the host and Kubernetes' runAsNonRoot check can resolve it without /etc/passwd
USER 1000:1000
WORKDIR /work
CMD ["vididi", "--help"]
