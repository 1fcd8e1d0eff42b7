"""`vididi retrieval`: kNN video retrieval over a run's frozen features.

Every test video queries all train videos by cosine similarity; Recall@k = share of queries with a
same-class video among the k nearest (evaluation/retrieval.py); target_R@k the same for a BYOL
run's EMA target encoder when the features file holds its features (`evaluation.target_encoder`). Writes
`layout.metrics_file(config, run, "retrieval", eval_dataset)`.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as cfgmod
from ..evaluation import inputs
from ..evaluation.retrieval import recall_at_k
from ..utils import write_metrics


def main(config: dict, run: cfgmod.Run, eval_dataset: str) -> Path:
    """Recall@k of `run`'s features on `eval_dataset` (test queries, train gallery)."""
    features, features_path, out = inputs.load(config, run, eval_dataset, "retrieval")
    train, test = inputs.trimmed(features, features_path)
    ks = config["evaluation"]["retrieval_ks"]
    device = inputs.device(config)  # float64 blocks and the module's tie rule on any device
    result = recall_at_k(test["features"], test["labels"], train["features"], train["labels"], ks=ks, device=device)
    metrics = {f"R@{k}": v for k, v in result.recall.items()}
    if "target_test" in features:  # a BYOL run's EMA target encoder (evaluation.target_encoder)
        target = recall_at_k(features["target_test"]["features"], features["target_test"]["labels"],
                             features["target_train"]["features"], features["target_train"]["labels"], ks=ks, device=device)  # fmt: skip
        metrics.update({f"target_R@{k}": v for k, v in target.recall.items()})
    protocol = {"queries": "test split", "gallery": "train split", "similarity": "cosine",
                "hit": "any same-class video among the top k", "ks": ks,
                "n_queries": len(test["labels"]), "gallery_size": result.gallery_size,
                "clips_per_video": int(features["attrs"]["eval_clips"]),
                "bn_recalibrated": bool(features["attrs"]["bn_recalibrated"])}  # fmt: skip
    write_metrics(out, metrics, protocol, **inputs.record(config, run, eval_dataset, features))
    return out
