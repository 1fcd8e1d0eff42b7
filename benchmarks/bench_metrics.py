"""Metric-job cost at paper scale (a script, not a test): how large is one `metric` job on a cluster?

Retrieval (Recall@k) and the linear probe (7 values of C, as configured) on random clustered features of
the size of UCF101 split 1: 9,537 train and 3,783 test videos, 101 classes, 512 dimensions (the width of
R3D-18 / R(2+1)D-18). Real features are less separable, so the probe's solver takes more iterations;
memory is set by the array sizes, which are the real ones. Prints seconds and the peak memory of the
process (both stages in one process, as a grouped SLURM job runs them side by side in processes of
their own). Sizes the `metric` entry of workflow/profiles/slurm (docs/deployment.md "Small jobs").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import resource
import time

import numpy as np

from vididi.evaluation.probe import linear_probe
from vididi.evaluation.retrieval import recall_at_k
from vididi.utils import machine

TRAIN, TEST, CLASSES, DIM = 9_537, 3_783, 101, 512
CS = [1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100]


def main() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLASSES, DIM))

    def draw(n: int):
        labels = rng.integers(0, CLASSES, n)
        return (centres[labels] + 3 * rng.normal(size=(n, DIM))).astype(np.float32), labels

    train_x, train_y = draw(TRAIN)
    test_x, test_y = draw(TEST)
    print(machine())
    start = time.time()
    recall_at_k(test_x, test_y, train_x, train_y, ks=(1, 5, 10, 20, 50))
    print(f"retrieval: {time.time() - start:.1f} s")
    start = time.time()
    result = linear_probe(train_x, train_y, test_x, test_y, Cs=CS, val_fraction=0.2, seed=0)
    print(f"probe: {time.time() - start:.1f} s (top-1 {result['top1']:.3f}, C {result['C']})")
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GB")


if __name__ == "__main__":
    main()
