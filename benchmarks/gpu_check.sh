#!/usr/bin/env bash
# Issue 15's GPU figures in one short run, for a session that is lent a GPU (none was when this was
# written, so nothing here has run on a GPU yet), and the cost of a fine-tuning epoch. About 6-9 minutes on one
# H200, most of it compiling.
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
# 4. the cost of one fine-tuning epoch of R3D-18 on UCF101 (9,537 videos, 16x112x112), bf16, batch 32:
#    time extrapolated from 20 timed steps, peak GPU memory measured
"$py" benchmarks/bench_finetune.py --device cuda --batch 32 --steps 20 --warmup 3 --threads 16 2>&1 \
    | tee "$out/bench_finetune_r3d18_b32.txt"
