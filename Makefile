# The two commands (README "Quick start"); each installs what is missing first:
#   make run    the whole pipeline on the embedded synthetic dataset (CPU is fine)
#   make test   the test suite (what CI runs: .ci/run)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: run test install system-packages docs plan-env

run: $(STAMP)
	snakemake --cores all

test: $(STAMP)
	pytest -q

install: $(STAMP)

# ffmpeg decodes videos, bsdtar unpacks RAR archives (UCF101, HMDB51). Without root the code falls
# back to the ffmpeg binary of the imageio-ffmpeg wheel; RAR datasets then need bsdtar from elsewhere.
system-packages:
	@if command -v ffmpeg >/dev/null && command -v bsdtar >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing ffmpeg and bsdtar (apt-get) ..."; log=$$(mktemp); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  if { apt-get update -q && apt-get install -y -q --no-install-recommends ffmpeg libarchive-tools; } >"$$log" 2>&1; \
	  then rm -f "$$log"; else echo "note: apt-get failed (its output: $$log); using imageio-ffmpeg's ffmpeg"; fi; \
	else echo "note: not root: using imageio-ffmpeg's ffmpeg; RAR archives need bsdtar (libarchive-tools)"; fi

$(STAMP): pyproject.toml constraints.txt | system-packages
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $@

# A planning environment for a cluster's login node: Snakemake and the SLURM plugin, no torch
# (envs/plan.txt, docs/deployment.md). It plans and submits; the jobs run in the image or a conda env.
PLAN_VENV ?= .venv-plan
plan-env: $(PLAN_VENV)/.installed
$(PLAN_VENV)/.installed: envs/plan.txt constraints.txt
	$(PYTHON) -m venv $(PLAN_VENV)
	$(PLAN_VENV)/bin/pip install -q -c constraints.txt -r envs/plan.txt
	touch $@

# Refresh the committed figures and tables of the README and docs/ from the latest runs of `make run`
# and the configs/ experiments; only the PNGs already shown and the summary tables are copied.
DOC_RESULTS = default:results/synthetic full:results/full/synthetic validation:results/validation/synthetic \
  validation-bg8:results/validation/synthetic_bg8 validation-looks0:results/validation/synthetic_looks0 \
  byol-tau:results/byol-tau/synthetic byol-tuning:results/byol-tuning/synthetic byol:results/byol/synthetic \
  supervised-ceiling:results/supervised-ceiling/synthetic \
  scene-bias-p0:results/scene-bias/sb0 scene-bias-p50:results/scene-bias/sb50 \
  scene-bias-p90:results/scene-bias/sb90 bn-recalibration:results/bn-recalibration/sb0 \
  scene-style-p50:results/scene-style/ss50 scene-style-p90:results/scene-style/ss90 \
  finetune:results/finetune/synthetic \
  threads-check-t1:results/threads-check/t1/synthetic threads-check-t2:results/threads-check/t2/synthetic
docs:
	@set -e; for pair in $(DOC_RESULTS); do \
	  name=$${pair%%:*}; src=$${pair#*:}; \
	  if [ -f "$$src/summary.md" ]; then \
	    mkdir -p docs/figures/$$name; cp "$$src/summary.md" docs/figures/$$name/; \
	    for f in $$(ls docs/figures/$$name/*.png 2>/dev/null | xargs -n1 basename 2>/dev/null); do cp "$$src/figures/$$f" docs/figures/$$name/; done; \
	    echo "docs/figures/$$name <- $$src"; \
	  fi; \
	done

# ---------------------------------------------------------------------------------------------------
# Container image, Apptainer file, SLURM test cluster (docs/deployment.md). None of this is part of
# `make test` / CI: these targets need a container engine, root or a cluster.
#   make wheelhouse    the pinned wheels (constraints.txt) for the image, downloaded on this host
#   make base-debian   a Debian bookworm base image bootstrapped here (no registry needed)
#   make image         the image, with docker or podman (BASE=... picks the base image)
#   make image-test    the test suite and the default pipeline inside the image, outputs on the host
#   make sif           vididi.sif (Apptainer) from the image: what `--use-singularity` runs
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= vididi:$(VERSION)
BASE ?= python:3.11-slim-bookworm
BASE_DEBIAN ?= vididi-base:bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
# docker where a daemon answers, else podman. ENGINE_FLAGS go before the subcommand (podman: e.g.
# --storage-driver vfs --runtime /usr/sbin/runc --cgroup-manager cgroupfs), RUN_FLAGS after `build`
# and `run`, BUILD_FLAGS after `build` only (with podman's vfs driver, where every layer is a full
# copy of the file system: --layers=false, one layer on the base instead of a 7 GB copy per step).
ENGINE ?= $(shell if docker info >/dev/null 2>&1; then echo docker; elif command -v podman >/dev/null; then echo podman; fi)
ENGINE_FLAGS ?=
RUN_FLAGS ?=
BUILD_FLAGS ?=
# the paper configs' loader workers need more than Docker's 64 MB of /dev/shm
SHM ?= --shm-size=8g
CONTAINER = $(strip $(ENGINE) $(ENGINE_FLAGS))
# the Python packages of the image: the project's dependencies, its test extra and the build backend
# (setuptools, for the editable install of /opt/vididi), all at constraints.txt
WHEEL_REQUIREMENTS = $(PYTHON) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['test'] + ['setuptools']))"

.PHONY: wheelhouse base-debian image image-test sif

wheelhouse: wheelhouse/.complete
wheelhouse/.complete: pyproject.toml constraints.txt
	@mkdir -p wheelhouse
	$(WHEEL_REQUIREMENTS) > wheelhouse/requirements.txt
	@$(PYTHON) -c "import sys, platform; sys.exit(None if sys.version_info[:2] == (3, 11) and platform.machine() == 'x86_64' else 'make wheelhouse: needs CPython 3.11 on x86_64 Linux, the interpreter of the image')"
	$(PYTHON) -m pip download --dest wheelhouse -c constraints.txt -r wheelhouse/requirements.txt
	touch $@

base-debian:
	@command -v debootstrap >/dev/null || { echo "make base-debian: needs debootstrap (apt-get install debootstrap) and root"; exit 1; }
	rm -rf build/rootfs && mkdir -p build
	debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,ffmpeg,libarchive-tools \
	  bookworm build/rootfs $(DEBIAN_MIRROR)
	rm -rf build/rootfs/var/lib/apt/lists/* build/rootfs/var/cache/apt/archives/*.deb
	tar -C build/rootfs -c . | $(CONTAINER) import --change 'CMD ["/bin/bash"]' - $(BASE_DEBIAN)
	rm -rf build/rootfs

image: wheelhouse/.complete
	@test -n "$(ENGINE)" || { echo "make image: needs docker or podman"; exit 1; }
	@start=$$(date +%s); \
	$(CONTAINER) build $(RUN_FLAGS) $(BUILD_FLAGS) --build-arg BASE=$(BASE) -t $(IMAGE) . || exit 1; \
	echo "make image: $(IMAGE) built in $$(( $$(date +%s) - start )) s, $$($(CONTAINER) image inspect --format '{{.Size}}' $(IMAGE) | awk '{printf "%.2f GB", $$1 / 1e9}')"

# The repository is mounted at its own path (as Apptainer does), the container runs as the calling
# user, so the outputs on the host belong to the user. The pipeline writes results/image-test/.
IMAGE_RUN = $(CONTAINER) run --rm $(RUN_FLAGS) $(SHM) -u "$$(id -u):$$(id -g)" -e HOME=/tmp \
	-v "$(CURDIR)":"$(CURDIR)" -w "$(CURDIR)" $(IMAGE)
image-test:
	$(IMAGE_RUN) python -m pytest -q -p no:cacheprovider -m "not slow" tests
	$(IMAGE_RUN) snakemake --cores 2 --config results_dir=results/image-test data_dir=data/image-test
	@echo "make image-test: results/image-test/synthetic/summary.md"

sif:
	@command -v apptainer >/dev/null || { echo "make sif: needs Apptainer (https://apptainer.org/docs/admin/main/installation.html)"; exit 1; }
	mkdir -p build && $(CONTAINER) save -o build/vididi-image.tar $(IMAGE)
	apptainer build --force vididi.sif docker-archive://build/vididi-image.tar
	rm -f build/vididi-image.tar
