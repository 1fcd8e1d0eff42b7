#!/usr/bin/env bash
# Everything that needs a GPU, in one short run (under 8 minutes on one H100/H200), written as one table
# (<outdir>/table.md) next to each benchmark's own output. Run it whenever a GPU machine is available:
#
#   bash benchmarks/gpu_check.sh [outdir]              # on the GPU host, from the repository root
#   bash benchmarks/gpu_check.sh --cpu-smoke [outdir]  # tiny sizes on the CPU: checks that it all runs
#
# It needs only torch (with torchvision), numpy, h5py, Pillow, PyYAML and scikit-learn: no Snakemake,
# jsonschema or ffmpeg (the config resolves without jsonschema; the data benchmark writes its own
# shards). It runs from the source tree (PYTHONPATH), with $PYTHON, else .venv/bin/python, else python3.
# Parts: (1) the training step, R3D-18, 64 clips of 16x112x112, bf16, channels_last_3d: bare eager,
# bare compiled, trainer eager, trainer compiled; (2) the device data path against the loader with
# 8 workers, raw and JPEG shards; (3) the torch linear probe at 240k x 512 (400 classes, the whole
# protocol); (4) retrieval at a 240k gallery, and the same ranks on the GPU as on the CPU at 20k;
# (5) the cost of one fine-tuning epoch of R3D-18 on UCF101 (time extrapolated from 20 steps, peak memory).
# A part that fails or runs out of its time is marked so in the table; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
if [[ "${1:-}" == "--cpu-smoke" ]]; then smoke=1; shift; fi
out=${1:-${OUT:-/tmp/vididi-gpu-check}}
mkdir -p "$out"
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON; elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" VIDIDI_NO_PROGRESS=1
start_all=$(date +%s)
if [[ $smoke == 1 ]]; then
  # as on the bare GPU host: no jsonschema (the config resolves through its defaults-only path)
  mkdir -p "$out/bare-host"
  echo 'raise ImportError("jsonschema hidden by gpu_check.sh --cpu-smoke, as on a bare GPU host")' >"$out/bare-host/jsonschema.py"
  export PYTHONPATH="$out/bare-host:$PYTHONPATH"
fi

part() {  # part NAME SECONDS COMMAND...: run with a time limit, keep its output, exit status and wall time
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee -a "$out/log.txt"
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  rc=$?
  echo "$rc" >"$out/$name.rc"
  echo $(($(date +%s) - t0)) >"$out/$name.seconds"
  tail -n 4 "$out/$name.txt" | tee -a "$out/log.txt"
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || cat COMMIT 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "mode: $([[ $smoke == 1 ]] && echo 'cpu smoke (tiny sizes: checks the script, measures nothing)' || echo gpu)"
  "$py" -c "import os, torch; from vididi.utils import machine; print('machine:', machine()); print('torch:', torch.__version__, ' threads:', torch.get_num_threads(), ' cores:', os.cpu_count())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu: /'
  "$py" -c "
import importlib
for m in ('torch', 'torchvision', 'numpy', 'h5py', 'PIL', 'yaml', 'sklearn', 'jsonschema', 'tqdm'):
    try:
        importlib.import_module(m); print(f'module {m}: yes')
    except ImportError:
        print(f'module {m}: MISSING')"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

if [[ $smoke == 1 ]]; then
  dev=cpu
  part train 300 "$py" benchmarks/bench_train.py --backbone small3d --size 32 --frames 4 --batch 4 --device cpu \
    --threads 1 --steps 2 --warmup 1 --repeats 2 --no-compile --json "$out/train.json"
  part data 300 "$py" benchmarks/bench_device_data.py --smoke --json "$out/data.json"
  part probe 300 "$py" benchmarks/bench_probe.py --protocol --sizes 3000 --classes 20 --dims 64 --threads 1 --json "$out/probe.json"
  part retrieval 300 "$py" benchmarks/bench_retrieval.py --sizes 5000 --queries 64 --repeats 1 --threads 1 --json "$out/retrieval.json"
  part retrieval_ranks_ref 120 "$py" benchmarks/bench_retrieval.py --sizes 2000 --queries 64 --repeats 1 --threads 1 --json "$out/retrieval_ranks_ref.json"
  part retrieval_ranks_dev 120 "$py" benchmarks/bench_retrieval.py --sizes 2000 --queries 64 --repeats 1 --threads 1 --json "$out/retrieval_ranks_dev.json"
else
  dev=cuda
  part train 270 "$py" benchmarks/bench_train.py --backbone r3d_18 --size 112 --frames 16 --batch 64 --device cuda \
    --threads 16 --steps 15 --warmup 3 --repeats 10 --json "$out/train.json"
  part data 100 "$py" benchmarks/bench_device_data.py --device cuda --workers 8 --batch 64 --batches 12 --json "$out/data.json"
  part probe 60 "$py" benchmarks/bench_probe.py --protocol --sizes 240000 --device cuda --threads 16 --json "$out/probe.json"
  part retrieval 45 "$py" benchmarks/bench_retrieval.py --sizes 240000 --queries 20000 --repeats 1 --threads 16 --device cuda \
    --json "$out/retrieval.json"
  part retrieval_ranks_ref 40 "$py" benchmarks/bench_retrieval.py --sizes 20000 --queries 256 --repeats 1 --threads 16 --json "$out/retrieval_ranks_ref.json"
  part retrieval_ranks_dev 20 "$py" benchmarks/bench_retrieval.py --sizes 20000 --queries 256 --repeats 1 --threads 16 --device cuda \
    --json "$out/retrieval_ranks_dev.json"
fi
if [[ $smoke == 1 ]]; then
  part finetune 120 "$py" benchmarks/bench_finetune.py --quick
else  # one fine-tuning epoch of R3D-18 on UCF101 (9,537 videos, 16x112x112, bf16, batch 32), extrapolated from 20 steps
  part finetune 120 "$py" benchmarks/bench_finetune.py --device cuda --batch 32 --steps 20 --warmup 3 --threads 16
fi
echo $(($(date +%s) - start_all)) >"$out/total.seconds"
"$py" benchmarks/gpu_check_table.py "$out" "$dev" | tee "$out/table.md"
