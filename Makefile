# The two commands (README "Quick start"); each installs what is missing first:
#   make run    the whole pipeline on the embedded synthetic dataset (CPU is fine)
#   make test   the test suite (what CI runs: .ci/run)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: run test install system-packages docs

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

# Refresh the README's committed figures and tables from the latest runs (after `make run` and/or the
# synthetic-full config); only the PNGs the README shows and the summary tables are copied.
docs:
	@set -e; for pair in default:results/synthetic full:results/full/synthetic; do \
	  name=$${pair%%:*}; src=$${pair#*:}; \
	  if [ -f "$$src/summary.md" ]; then \
	    mkdir -p docs/figures/$$name; cp "$$src/summary.md" docs/figures/$$name/; \
	    for f in $$(ls docs/figures/$$name/*.png 2>/dev/null | xargs -n1 basename 2>/dev/null); do cp "$$src/figures/$$f" docs/figures/$$name/; done; \
	    echo "docs/figures/$$name <- $$src"; \
	  fi; \
	done
