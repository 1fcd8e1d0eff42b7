#!/usr/bin/env bash
# Issue 15's GPU figures in one short run, for a session that is lent a GPU (none was when this was
# written, so nothing here has run on a GPU yet). About 5-8 minutes on one H200, most of it compiling.
#   bash benchmarks/gpu_check.sh [outdir]
set -euo pipefail
out=${1:-${OUT:-/tmp/vididi-gpu-check}}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# 1. the step: eager and compiled bare loop and trainer, R3D-18, 16x112x112, batch 64, bf16
"$py" benchmarks/bench_train.py --backbone r3d_18 --size 112 --frames 16 --batch 64 --device cuda \
    --threads 16 --steps 20 --warmup 3 2>&1 | tee "$out/bench_train_r3d18_b64.txt"
# 2. frames/s per core of each shard storage on this host's CPUs (the GPU host's cores)
"$py" benchmarks/bench_decode.py 2>&1 | tee "$out/bench_decode.txt"
# 3. retrieval on the GPU's host memory and CPUs (the GPU path is the same code with device=cuda)
"$py" benchmarks/bench_retrieval.py --sizes 10000,100000 --queries 256 2>&1 | tee "$out/bench_retrieval.txt"
