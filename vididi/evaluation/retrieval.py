"""kNN video retrieval: test videos query train videos by cosine similarity; Recall@k.

Protocol (docs/method.md): every query (test video) ranks the whole gallery (train videos) by cosine
similarity of their features; Recall@k is the fraction of queries with at least one video of the
query's class among the first k gallery items.

Ranking rule (deterministic): gallery items are ordered by similarity, highest first, and items with
exactly equal similarity by gallery index, lowest first. Every rank this module reports is a rank in
that total order, so ties never depend on the sorting algorithm or on the chunk size.

Rather than sorting (``torch.topk`` is not stable), the rank of the first same-class item is counted
directly: if that item has similarity s* and gallery index i*, its 1-based rank is

    1 + #{j : sim_j > s*} + #{j : sim_j == s*, j < i*},

which needs one (query chunk x gallery tile) similarity block at a time and nothing larger.

Usage::

    result = recall_at_k(test_features, test_labels, train_features, train_labels)
    result.recall[1], result.recall[5]        # Recall@1, Recall@5
    result.first_hit_rank                     # per query, 1-based; inf when no positive exists
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from vididi.utils import VididiError

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
BLOCK_ENTRIES = 1 << 24  # similarities per (query chunk x gallery tile) block when not given


@dataclass(frozen=True)
class RetrievalResult:
    """Recall@k per requested k, and the rank of each query's first same-class gallery item.

    `first_hit_rank[q]` is 1-based in the ranking rule of this module, and `inf` (float) when the
    gallery holds no video of query q's class, so `first_hit_rank <= k` is the hit test for any k.
    """

    recall: dict[int, float]
    first_hit_rank: np.ndarray
    gallery_size: int

    def as_metrics(self) -> dict:
        """JSON-ready summary (string keys, Python floats)."""
        return {
            "recall_at_k": {str(k): float(v) for k, v in self.recall.items()},
            "n_queries": int(self.first_hit_rank.shape[0]),
            "gallery_size": self.gallery_size,
            "queries_without_positive": int(np.isinf(self.first_hit_rank).sum()),
        }


def recall_at_k(
    query,
    query_labels,
    gallery,
    gallery_labels,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    gallery_chunk_size: int | None = None,
) -> RetrievalResult:
    """Recall@k of cosine-similarity retrieval of `query` (N, D) against `gallery` (M, D).

    Recall@k = mean over queries of [first_hit_rank <= min(k, M)]. A k larger than the gallery is
    clamped to the gallery size M (Recall@k is then the fraction of queries whose class occurs in the
    gallery at all); the result is still keyed by the requested k. A query whose class is absent from
    the gallery counts as a miss for every k. Features and labels may be numpy arrays or torch tensors;
    labels may be integers or strings. See `first_hit_ranks` for chunking, device and zero vectors.
    """
    ks = _check_ks(ks)
    ranks = first_hit_ranks(
        query, query_labels, gallery, gallery_labels, chunk_size, device, gallery_chunk_size
    )
    gallery_size = int(np.shape(gallery)[0])
    return RetrievalResult(recall_from_ranks(ranks, ks, gallery_size), ranks, gallery_size)


def recall_from_ranks(
    first_hit_rank: np.ndarray, ks: Sequence[int], gallery_size: int
) -> dict[int, float]:
    """Recall@k = fraction of queries with first_hit_rank <= min(k, gallery_size), for each k."""
    ks = _check_ks(ks)
    ranks = np.asarray(first_hit_rank, dtype=np.float64)
    if ranks.size == 0:
        raise VididiError("recall needs at least one query; first_hit_rank is empty")
    return {k: float(np.mean(ranks <= min(k, gallery_size))) for k in ks}


def first_hit_ranks(
    query,
    query_labels,
    gallery,
    gallery_labels,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    gallery_chunk_size: int | None = None,
) -> np.ndarray:
    """1-based rank of the first same-class gallery item for every query (inf if there is none).

    Features are L2-normalised and similarities computed in float64, in blocks of `chunk_size`
    queries x `gallery_chunk_size` gallery items (default: blocks of BLOCK_ENTRIES similarities,
    about 16 M, i.e. a few hundred MiB of temporaries), so peak memory beyond the inputs is
    O(chunk_size x gallery_chunk_size + gallery_chunk_size x D) whatever the gallery size. A gallery
    larger than one block is read twice per query chunk (best positive, then its rank), so the
    matmul cost doubles there; every block is computed by the same call both times, so the ranks do
    not depend on the block sizes. Ties are exact equalities of the computed similarities
    (identical feature vectors, for instance). A zero feature vector has cosine similarity 0 with everything (the
    `torch.nn.functional.normalize` convention). `device=None` uses the device of `query` when it is
    a tensor, else the CPU.
    """
    query_t = _as_features(query, "query")
    gallery_t = _as_features(gallery, "gallery")
    if query_t.shape[1] != gallery_t.shape[1]:
        raise VididiError(
            f"query and gallery feature sizes differ: query {tuple(query_t.shape)}, "
            f"gallery {tuple(gallery_t.shape)}"
        )
    query_codes, gallery_codes = _encode_labels(query_labels, gallery_labels, query_t, gallery_t)
    if chunk_size < 1:
        raise VididiError(f"chunk_size must be >= 1, got {chunk_size}")
    if device is None:
        device = query_t.device
    device = torch.device(device)

    gallery_size = gallery_t.shape[0]
    if gallery_chunk_size is None:
        gallery_chunk_size = max(1, BLOCK_ENTRIES // chunk_size)
    if gallery_chunk_size < 1:
        raise VididiError(f"gallery_chunk_size must be >= 1, got {gallery_chunk_size}")
    tiles = [(lo, min(lo + gallery_chunk_size, gallery_size)) for lo in range(0, gallery_size, gallery_chunk_size)]
    if len(tiles) == 1:  # small gallery: normalise it once, one block per query chunk
        whole = _gallery_tile(gallery_t, gallery_codes, 0, gallery_size, device)
        tile_of = lambda lo, hi: whole  # noqa: E731
    else:  # large gallery: normalise each tile when it is used, so only one tile is ever held
        tile_of = lambda lo, hi: _gallery_tile(gallery_t, gallery_codes, lo, hi, device)  # noqa: E731
    ranks = np.empty(query_t.shape[0], dtype=np.float64)
    for lo in range(0, query_t.shape[0], chunk_size):
        chunk = torch.nn.functional.normalize(
            query_t[lo : lo + chunk_size].to(device, torch.float64), dim=1
        )
        codes = query_codes[lo : lo + chunk_size].to(device)
        # Pass 1: the best positive of each query, highest similarity, lowest gallery index among
        # equals. Tiles come in index order, so an equal similarity in a later tile never wins.
        best_sim = torch.full((chunk.shape[0],), -torch.inf, dtype=torch.float64, device=device)
        best_index = torch.full((chunk.shape[0],), gallery_size, dtype=torch.int64, device=device)
        for g_lo, g_hi in tiles:
            tile, tile_codes = tile_of(g_lo, g_hi)
            sim = chunk @ tile.T  # (chunk, tile)
            same = codes[:, None] == tile_codes[None, :]
            tile_best = sim.masked_fill(~same, -torch.inf).amax(dim=1)
            at_best = same & (sim == tile_best[:, None])
            tile_index = g_lo + at_best.to(torch.uint8).argmax(dim=1)  # first True (documented)
            better = at_best.any(dim=1) & (tile_best > best_sim)
            best_sim = torch.where(better, tile_best, best_sim)
            best_index = torch.where(better, tile_index, best_index)
        # Pass 2: rank = 1 + #(more similar) + #(as similar and lower index). With one tile the
        # block from pass 1 is reused; with several each tile's block is recomputed identically.
        ahead = torch.zeros(chunk.shape[0], dtype=torch.int64, device=device)
        for g_lo, g_hi in tiles:
            if len(tiles) > 1:
                tile, _ = tile_of(g_lo, g_hi)
                sim = chunk @ tile.T
            ahead += (sim > best_sim[:, None]).sum(dim=1)
            index = torch.arange(g_lo, g_hi, device=device)
            ahead += ((sim == best_sim[:, None]) & (index[None, :] < best_index[:, None])).sum(dim=1)
        rank = 1.0 + ahead.to(torch.float64)
        rank = torch.where(best_index < gallery_size, rank, torch.full_like(rank, torch.inf))
        ranks[lo : lo + chunk.shape[0]] = rank.cpu().numpy()
    return ranks


def _gallery_tile(gallery_t: torch.Tensor, gallery_codes: torch.Tensor, lo: int, hi: int, device):
    """Gallery rows lo:hi, L2-normalised in float64 on `device`, and their label codes."""
    tile = torch.nn.functional.normalize(gallery_t[lo:hi].to(device, torch.float64), dim=1)
    return tile, gallery_codes[lo:hi].to(device)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise VididiError(f"ks must be a non-empty list of positive integers, got {ks}")
    return ks


def _as_features(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            array = np.asarray(x)
            if array.dtype.kind != "f":  # floats stay as they are (float32 features: half the memory)
                array = np.asarray(x, dtype=np.float64)
            t = torch.from_numpy(array)
        except (TypeError, ValueError) as err:
            raise VididiError(f"{name} features must be a numeric array: {err}") from None
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise VididiError(
            f"{name} features must be a non-empty 2-D array (items, dims), got shape {tuple(t.shape)}"
        )
    if t.is_complex() or t.dtype == torch.bool:
        raise VididiError(f"{name} features must be real numbers, got dtype {t.dtype}")
    rows = max(1, (1 << 24) // t.shape[1])  # checked in blocks: no (items x dims) bool array at once
    if not all(torch.isfinite(t[lo : lo + rows]).all() for lo in range(0, t.shape[0], rows)):
        raise VididiError(f"{name} features contain NaN or inf")
    return t


def _encode_labels(
    query_labels, gallery_labels, query_t: torch.Tensor, gallery_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map both label arrays (ints or strings) onto shared integer codes."""
    q = _labels_to_numpy(query_labels)
    g = _labels_to_numpy(gallery_labels)
    if q.shape != (query_t.shape[0],):
        raise VididiError(f"query_labels must have shape ({query_t.shape[0]},), got {q.shape}")
    if g.shape != (gallery_t.shape[0],):
        raise VididiError(f"gallery_labels must have shape ({gallery_t.shape[0]},), got {g.shape}")
    if (q.dtype.kind in "biuf") != (g.dtype.kind in "biuf"):
        # np.unique would turn 3 into "3" and silently match it with a string label "3".
        raise VididiError(
            f"query_labels ({q.dtype}) and gallery_labels ({g.dtype}) must both be numbers "
            "or both be strings"
        )
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = torch.from_numpy(codes.astype(np.int64))
    return codes[: q.shape[0]], codes[q.shape[0] :]


def _labels_to_numpy(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy()
    return np.asarray(labels)
