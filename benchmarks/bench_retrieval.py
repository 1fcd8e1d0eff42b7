"""Retrieval-at-scale benchmark (a script, not a test): kNN Recall@k cost on synthetic galleries.

For each gallery size (default 10k / 100k / 1M vectors of 512 float32 features, 400 classes; the
R3D-18 feature size and Kinetics-400's class count) and a fixed set of queries, one fresh process per
measurement reports wall time and peak memory of `vididi.evaluation.retrieval.first_hit_ranks`:

  tiled      the default: (query chunk x gallery tile) blocks of BLOCK_ENTRIES similarities
  unblocked  the baseline from the same run: one (query chunk x whole gallery) block, the behaviour
             before gallery tiling (gallery_chunk_size = gallery size); skipped when its predicted
             peak would not fit in the memory this machine has free (the prediction is printed)

Peak memory is the process's high-water RSS minus its RSS once the inputs exist (so: what retrieval
adds on top of the features it is given), and the input size is printed next to it. Both modes
must return identical ranks; the script checks it wherever both ran.

    .venv/bin/python benchmarks/bench_retrieval.py                       # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_retrieval.py --sizes 10000 --queries 128
    .venv/bin/python benchmarks/bench_retrieval.py --probe 10000,40000     # linear probe cost only

--probe N,...: the linear probe's cost per lbfgs iteration (vididi.evaluation.probe._fit_classifier, the same
scikit-learn fit the probe runs 8 times: 7 values of C + the refit) on N synthetic 512-d features of
400 classes, --probe-iters iterations, fresh process each; time per iteration and peak memory, and the
linear extrapolation to Kinetics-400's ~240k training videos (time per iteration grows ~linearly in N).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source tree on a bare GPU host
DIMS, CLASSES = 512, 400
# The unblocked baseline's peak: per similarity entry a float64 block, its float64 masked copy, an
# int64 index block and a few bool blocks (~28 bytes), plus two float64 copies of the whole gallery
# (the cast and the normalised result: 16 bytes per feature).
UNBLOCKED_BYTES_PER_ENTRY = 28
UNBLOCKED_BYTES_PER_FEATURE = 16


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(size: int, queries: int, mode: str, chunk: int, threads: int, device: str = "cpu") -> dict:
    import numpy as np
    import torch

    from vididi.evaluation.retrieval import first_hit_ranks

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    gallery = torch.randn(size, DIMS, generator=g)  # float32, like the features files
    query = torch.randn(queries, DIMS, generator=g)
    # Make retrieval non-trivial: each vector leans towards its class centre.
    centres = torch.randn(CLASSES, DIMS, generator=g)
    gallery_labels = torch.randint(0, CLASSES, (size,), generator=g)
    query_labels = torch.randint(0, CLASSES, (queries,), generator=g)
    for x, labels in ((gallery, gallery_labels), (query, query_labels)):
        for lo in range(0, x.shape[0], 65536):  # in blocks: no input-sized temporary in the peak
            x[lo : lo + 65536].add_(centres[labels[lo : lo + 65536]], alpha=0.1)
    del centres
    if device != "cpu":  # the stage's device path: features handed over on the device, blocks computed there
        gallery, query = gallery.to(device), query.to(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = rss_bytes()
    tile = size if mode == "unblocked" else None
    t0 = time.perf_counter()
    ranks = first_hit_ranks(query, query_labels, gallery, gallery_labels, chunk_size=chunk, gallery_chunk_size=tile, device=device)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    extra = {"device_peak_bytes": torch.cuda.max_memory_allocated()} if device != "cpu" else {}
    return {**extra,
        "seconds": seconds,
        "extra_bytes": max(0, peak - base),
        "input_bytes": (gallery.numel() + query.numel()) * 4,
        "recall1": float(np.mean(ranks <= 1)),
        "ranks_sha": __import__("hashlib").sha256(ranks.tobytes()).hexdigest()[:16],
    }


def probe_child(n: int, iters: int) -> dict:
    import warnings

    import numpy as np

    from vididi.evaluation.probe import _fit_classifier

    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, n)
    centres = rng.normal(size=(CLASSES, DIMS)).astype(np.float32)
    x = (rng.normal(size=(n, DIMS)).astype(np.float32) + 0.3 * centres[labels])
    base = rss_bytes()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: iterations are capped on purpose
        clf, _ = _fit_classifier(x, labels, 1.0, iters)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "iters": int(np.max(clf.n_iter_)), "extra_bytes": max(0, peak - base)}


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"]


def run_child(args, size: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--sizes", str(size), "--queries", str(args.queries),
           "--chunk", str(args.chunk), "--threads", str(args.threads), "--device", args.device]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of(args, size: int, modes: list[str]) -> dict[str, dict]:
    """Each mode `--repeats` times, interleaved (order alternating); the fastest run of each."""
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            runs[mode].append(run_child(args, size, mode))
    return {m: min(v, key=lambda x: x["seconds"]) for m, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=256, help="queries per size (time scales linearly)")
    parser.add_argument("--chunk", type=int, default=1024, help="query chunk size (the default of recall_at_k)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per mode and size; best time")
    parser.add_argument("--probe", help="linear-probe sizes instead of retrieval, e.g. 10000,40000")
    parser.add_argument("--probe-iters", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="where the similarity blocks are computed (cpu, cuda)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--child", choices=["tiled", "unblocked", "probe"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child == "probe":
        print(json.dumps(probe_child(sizes[0], args.probe_iters)))
        return
    if args.child:
        print(json.dumps(child(sizes[0], args.queries, args.child, args.chunk, args.threads, args.device)))
        return
    if args.probe:
        print(f"# linear probe (lbfgs, {CLASSES} classes, {DIMS}-d, {args.probe_iters} iterations)  "
              f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}")  # fmt: skip
        for n in (int(v) for v in args.probe.split(",")):
            cmd = [sys.executable, __file__, "--child", "probe", "--sizes", str(n), "--probe-iters", str(args.probe_iters)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            per_iter = r["seconds"] / max(1, r["iters"])
            k400 = per_iter * 240_000 / n
            print(f"  N={n:>7}: {r['iters']} iterations in {r['seconds']:.1f} s = {per_iter:.2f} s/iteration, "
                  f"peak +{r['extra_bytes'] / 2**20:.0f} MiB; at N=240k about {k400:.1f} s/iteration, "
                  f"{8 * 1000 * k400 / 3600:.1f} h for 8 fits x 1000 iterations (the cap)")  # fmt: skip
        print(f"# load average after: {os.getloadavg()}")
        return

    from vididi.evaluation.retrieval import BLOCK_ENTRIES

    print(f"# bench_retrieval  device={args.device}  queries={args.queries}  repeats={args.repeats} (best)  dims={DIMS}  classes={CLASSES}  threads={args.threads}  "
          f"query chunk={args.chunk}  tile={max(1, BLOCK_ENTRIES // args.chunk)}")  # fmt: skip
    print(f"# load average before: {os.getloadavg()}  cores: {os.cpu_count()}  "
          f"MemAvailable: {available_bytes() / 2**30:.1f} GiB")  # fmt: skip
    print(f"{'gallery':>9} {'inputs':>9} | {'tiled s':>8} {'ms/query':>8} {'peak+':>9} | "
          f"{'unblocked s':>11} {'ms/query':>8} {'peak+':>9} | same ranks")  # fmt: skip
    rows = []
    for size in sizes:
        predicted = UNBLOCKED_BYTES_PER_ENTRY * min(args.chunk, args.queries) * size + UNBLOCKED_BYTES_PER_FEATURE * size * DIMS
        inputs = (size + args.queries) * DIMS * 4
        fits = predicted + inputs < 0.7 * available_bytes() and args.device == "cpu"  # the baseline is the CPU's
        best = best_of(args, size, ["tiled", "unblocked"] if fits else ["tiled"])
        tiled = best["tiled"]
        if fits:
            base = best["unblocked"]
            base_cols = (f"{base['seconds']:>11.2f} {1e3 * base['seconds'] / args.queries:>8.2f} "
                         f"{base['extra_bytes'] / 2**20:>7.0f}Mi")  # fmt: skip
            same = "yes" if base["ranks_sha"] == tiled["ranks_sha"] else "NO"
        else:
            base_cols = f"{'skipped':>11} {'':>8} {predicted / 2**30:>6.1f}Gi?"
            same = "(baseline would not fit)"
        print(f"{size:>9} {tiled['input_bytes'] / 2**20:>7.0f}Mi | {tiled['seconds']:>8.2f} "
              f"{1e3 * tiled['seconds'] / args.queries:>8.2f} {tiled['extra_bytes'] / 2**20:>7.0f}Mi | "
              f"{base_cols} | {same}   R@1={tiled['recall1']:.3f}"
              + (f"   device peak {tiled['device_peak_bytes'] / 2**20:.0f}Mi" if "device_peak_bytes" in tiled else ""), flush=True)  # fmt: skip
        rows.append({"gallery": size, "queries": args.queries, "tiled": tiled, **({"unblocked": best["unblocked"]} if fits else {})})
    print(f"# load average after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
