"""Linear-probe-at-scale benchmark (a script, not a test): the torch probe against scikit-learn's.

For each size N (default 20k, 100k and 240k videos of 512 float32 features in 400 classes: R3D-18's
feature size and Kinetics-400's class count and training-set size), one fresh process per measurement
fits the probe's classifier (`vididi.evaluation.probe._fit_classifier`, the fit the probe runs 8
times: 7 values of C + the refit) on standardised synthetic features with C = 1:

  torch    `solver="torch"`: full-batch L-BFGS in float64 on --device
  sklearn  `solver="sklearn"`: scikit-learn's lbfgs (the reference and today's default), on the CPU

the torch fit to convergence (scikit-learn's stopping rule, gtol 1e-4), scikit-learn's capped at
--iters iterations (a full fit takes hours here). Reported: the torch fit's seconds and iterations;
scikit-learn's seconds per iteration and, as an ESTIMATE, that times the iterations the torch fit
needed (both run L-BFGS on the same objective); peak memory beyond the inputs (host RSS; on CUDA
also the device's peak); the ratio. scikit-learn is skipped above --sklearn-max (default 100k) and
its figures there are EXTRAPOLATED linearly in N from the largest size measured, and labelled so.
The probe runs 8 such fits (7 values of C + the refit); small C converge faster, large C slower.

--protocol runs the whole probe (`linear_probe(..., solver="torch")`: C chosen on the held-out
part, refit, test top-1) at each size instead, on a test set of N/10 videos: the figure for a GPU.

    .venv/bin/python benchmarks/bench_probe.py                              # ~10-20 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_probe.py --sizes 20000 --iters 3
    python benchmarks/bench_probe.py --device cuda --protocol --sizes 240000  # on a GPU host
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIMS, CLASSES = 512, 400


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def features(n: int, seed: int = 0, classes: int = CLASSES, dims: int = DIMS):
    """Standardised 512-d features leaning towards their class centre (float64, as the probe holds them)."""
    import numpy as np

    centres = np.random.default_rng(0).normal(size=(classes, dims)).astype(np.float32)  # shared by every set
    rng = np.random.default_rng([seed, 1])
    labels = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dims)).astype(np.float32)
    x += 0.3 * centres[labels]
    x = x.astype(np.float64)
    x -= x.mean(0)
    x /= x.std(0)
    return x, labels


def child(solver: str, n: int, iters: int, device: str, threads: int, protocol: bool, classes: int, dims: int) -> dict:
    import warnings

    import numpy as np
    import torch

    from vididi.evaluation.probe import _fit_classifier, linear_probe

    torch.set_num_threads(threads)
    x, labels = features(n, classes=classes, dims=dims)
    if protocol:
        tx, tlabels = features(max(classes, n // 10), seed=1, classes=classes, dims=dims)
    with warnings.catch_warnings():  # untimed warm-up: first-call costs (kernels, allocator, threads)
        warnings.simplefilter("ignore")
        _fit_classifier(x[: 4 * classes], labels[: 4 * classes], 1.0, 2, solver, device if solver == "torch" else None)
    base = rss_bytes()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: iterations are capped on purpose
        if protocol:
            result = linear_probe(x, labels, tx, tlabels, solver=solver, device=device if solver == "torch" else None)
            out = {"top1": result["top1"], "C": result["C"], "converged": result["final_fit_converged"]}
        else:
            cap = 1000 if solver == "torch" else iters  # torch: to convergence; scikit-learn: capped
            clf, _ = _fit_classifier(x, labels, 1.0, cap, solver, device if solver == "torch" else None)
            out = {"iters": int(np.max(clf.n_iter_))}
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.update(seconds=seconds, extra_bytes=max(0, peak - base), input_bytes=x.nbytes)
    if device.startswith("cuda"):
        out["device_peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


def run_child(args, solver: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", solver, "--sizes", str(n), "--iters", str(args.iters),
           "--device", args.device, "--threads", str(args.threads), "--classes", str(args.classes), "--dims", str(args.dims)]  # fmt: skip
    if args.protocol:
        cmd.append("--protocol")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"bench_probe: {solver} at N={n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,100000,240000")
    parser.add_argument("--iters", type=int, default=3, help="scikit-learn's iterations (capped)")
    parser.add_argument("--device", default="cpu", help="the torch probe's device (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--sklearn-max", type=int, default=100_000, help="largest N scikit-learn is measured at")
    parser.add_argument("--protocol", action="store_true", help="the whole probe protocol (torch only)")
    parser.add_argument("--classes", type=int, default=CLASSES)
    parser.add_argument("--dims", type=int, default=DIMS)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", choices=["torch", "sklearn"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.child, sizes[0], args.iters, args.device, args.threads, args.protocol, args.classes, args.dims)))
        return 0

    from vididi.utils import machine

    mib = 2**20
    print(f"# bench_probe  {args.dims}-d float64 features, {args.classes} classes, C=1, "
          f"{'whole protocol (7 C + refit)' if args.protocol else f'torch to convergence, scikit-learn {args.iters} iterations'}; "
          f"torch on {args.device}, {args.threads} threads")  # fmt: skip
    print(f"# machine: {machine()}  load average before: {os.getloadavg()}")
    rows = []
    if args.protocol:
        print(f"{'N':>8} | {'torch s':>9} {'top-1':>6} {'C':>7} {'host peak+':>11} {'device peak':>12}")
        for n in sizes:
            r = run_child(args, "torch", n)
            rows.append({"n": n, "solver": "torch", "protocol": True, **r})
            dev = f"{r['device_peak_bytes'] / mib:>10.0f}Mi" if "device_peak_bytes" in r else f"{'-':>12}"
            print(f"{n:>8} | {r['seconds']:>9.2f} {r['top1']:>6.3f} {r['C']:>7g} {r['extra_bytes'] / mib:>9.0f}Mi {dev}", flush=True)
    else:
        print(f"{'N':>8} | {'torch fit s':>11} {'iters':>5} {'peak+':>9} {'dev peak':>9} | {'sklearn s/iter':>14} "
              f"{'same iters s':>12} {'peak+':>9} | sklearn/torch")  # fmt: skip
        measured = None
        for n in sizes:
            t = run_child(args, "torch", n)
            if n <= args.sklearn_max:
                s = run_child(args, "sklearn", n)
                s_iter, label, s_peak = s["seconds"] / max(1, s["iters"]), " (estimate)", f"{s['extra_bytes'] / mib:>7.0f}Mi"
                measured = (n, s_iter)
            elif measured:
                s_iter, s_peak = measured[1] * n / measured[0], f"{'-':>9}"
                label = f" (EXTRAPOLATED from N={measured[0]})"
            else:
                s_iter, label, s_peak = float("nan"), " (not measured)", f"{'-':>9}"
            s_fit = s_iter * t["iters"]
            dev = f"{t['device_peak_bytes'] / mib:>7.0f}Mi" if t.get("device_peak_bytes") else f"{'-':>9}"
            rows.append({"n": n, "torch_fit_s": t["seconds"], "torch_iters": t["iters"], "torch_extra_bytes": t["extra_bytes"],
                         "torch_device_peak_bytes": t.get("device_peak_bytes"), "sklearn_s_per_iter": s_iter,
                         "sklearn_same_iters_s": s_fit, "sklearn_extrapolated": "EXTRAPOLATED" in label})  # fmt: skip
            print(f"{n:>8} | {t['seconds']:>11.2f} {t['iters']:>5} {t['extra_bytes'] / mib:>7.0f}Mi {dev} | "
                  f"{s_iter:>14.2f} {s_fit:>12.1f} {s_peak} | {s_fit / t['seconds']:>6.1f}x{label}", flush=True)  # fmt: skip
    print(f"# load average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
