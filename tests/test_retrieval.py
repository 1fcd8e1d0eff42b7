"""Tests for vididi.evaluation.retrieval: hand-made cases with known ranks, and a brute-force numpy reference."""

import math

import numpy as np
import pytest
import torch

from vididi.evaluation.retrieval import first_hit_ranks, recall_at_k, recall_from_ranks
from vididi.utils import VididiError


def brute_force_first_hits(query, query_labels, gallery, gallery_labels, similarity=None):
    """Reference: sort the full gallery for each query (similarity desc, index asc), scan for a positive."""
    ranks = []
    for q in range(len(query)):
        if similarity is None:
            sims = [
                float(
                    np.dot(query[q], gallery[g])
                    / (np.linalg.norm(query[q]) * np.linalg.norm(gallery[g]))
                )
                for g in range(len(gallery))
            ]
        else:
            sims = [similarity(q, g) for g in range(len(gallery))]
        order = sorted(range(len(gallery)), key=lambda g: (-sims[g], g))
        rank = math.inf
        for position, g in enumerate(order, start=1):
            if gallery_labels[g] == query_labels[q]:
                rank = position
                break
        ranks.append(rank)
    return np.array(ranks, dtype=float)


def brute_force_recall(ranks, k, gallery_size):
    hits = 0
    for r in ranks:
        if r <= min(k, gallery_size):
            hits += 1
    return hits / len(ranks)


def test_exact_ties_are_broken_by_lowest_gallery_index():
    # Gallery items 0 and 1 are the same direction (1 is a scaled copy), so they tie exactly.
    gallery = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    query = np.array([[2.0, 0.0], [2.0, 0.0]])
    # Query 0 is class "b": item 0 ("a") comes before its tied twin item 1 ("b") -> rank 2.
    # Query 1 is class "a": item 0 wins the tie -> rank 1.
    result = recall_at_k(query, ["b", "a"], gallery, ["a", "b", "b"], ks=(1, 2))
    np.testing.assert_array_equal(result.first_hit_rank, [2.0, 1.0])
    assert result.recall == {1: 0.5, 2: 1.0}


def test_tie_rule_holds_for_swapped_gallery_order():
    gallery = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    result = recall_at_k(np.array([[1.0, 0.0]]), [1], gallery, [1, 0, 1], ks=(1,))
    assert result.first_hit_rank.tolist() == [1.0]
    result = recall_at_k(np.array([[1.0, 0.0]]), [0], gallery, [1, 0, 1], ks=(1,))
    assert result.first_hit_rank.tolist() == [2.0]


def test_k_larger_than_gallery_is_clamped_and_absent_class_is_a_miss():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gallery_labels = [0, 1, 2]
    query = np.array([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    # Query 0: class 2 is the least similar item (rank 3). Query 1: class 7 is not in the gallery.
    # Query 2: class 1 is the most similar item (rank 1).
    result = recall_at_k(query, [2, 7, 1], gallery, gallery_labels, ks=(1, 2, 50))
    assert result.first_hit_rank[0] == 3.0
    assert np.isinf(result.first_hit_rank[1])
    assert result.first_hit_rank[2] == 1.0
    assert result.recall[1] == pytest.approx(1 / 3)
    assert result.recall[2] == pytest.approx(1 / 3)
    assert result.recall[50] == pytest.approx(2 / 3)  # k=50 acts as k=3: everything but the absent class
    assert result.gallery_size == 3
    assert result.as_metrics() == {
        "recall_at_k": {
            "1": pytest.approx(1 / 3), "2": pytest.approx(1 / 3), "50": pytest.approx(2 / 3)
        },
        "n_queries": 3,
        "gallery_size": 3,
        "queries_without_positive": 1,
    }


def test_similarity_is_cosine_not_dot_product():
    # A long vector far off the query direction must not beat a short vector along it.
    gallery = np.array([[10.0, 10.0], [0.1, 0.0]])
    result = recall_at_k(np.array([[1.0, 0.0]]), [1], gallery, [0, 1], ks=(1,))
    assert result.first_hit_rank.tolist() == [1.0]


def test_zero_feature_has_zero_similarity():
    gallery = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    # Similarities to the query (1, 0): -1, 0, 1 -> order 2, 1, 0.
    ranks = first_hit_ranks(np.array([[1.0, 0.0]]), [5], gallery, [9, 5, 9])
    assert ranks.tolist() == [2.0]


def test_chunking_gives_the_same_answer_as_one_chunk():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(40, 6))
    query = rng.normal(size=(23, 6))
    gallery_labels = rng.integers(0, 5, size=40)
    query_labels = rng.integers(0, 6, size=23)  # class 5 never appears in the gallery
    one = recall_at_k(query, query_labels, gallery, gallery_labels, chunk_size=1024)
    for chunk_size in (1, 4, 7, 22):
        chunked = recall_at_k(query, query_labels, gallery, gallery_labels, chunk_size=chunk_size)
        np.testing.assert_array_equal(chunked.first_hit_rank, one.first_hit_rank)
        assert chunked.recall == one.recall


def test_random_case_matches_brute_force_reference():
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(60, 8))
    query = rng.normal(size=(30, 8))
    gallery_labels = rng.integers(0, 6, size=60)
    query_labels = rng.integers(0, 7, size=30)
    ks = (1, 5, 10, 20, 50)
    result = recall_at_k(query, query_labels, gallery, gallery_labels, ks=ks, chunk_size=8)
    reference = brute_force_first_hits(query, query_labels, gallery, gallery_labels)
    np.testing.assert_array_equal(result.first_hit_rank, reference)
    for k in ks:
        assert result.recall[k] == pytest.approx(brute_force_recall(reference, k, 60))
    assert 0.0 < result.recall[1] < result.recall[50] <= 1.0  # the case is not degenerate


def test_many_exact_ties_match_brute_force_reference():
    # Features drawn from a pool of 5 directions: lots of bit-identical gallery rows, i.e. exact ties.
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(5, 4))
    gallery_ids = rng.integers(0, 5, size=50)
    query_ids = rng.integers(0, 5, size=20)
    gallery_labels = rng.integers(0, 4, size=50)
    query_labels = rng.integers(0, 4, size=20)

    def pool_similarity(q, g):
        a, b = pool[query_ids[q]], pool[gallery_ids[g]]
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    reference = brute_force_first_hits(
        query_ids, query_labels, gallery_ids, gallery_labels, similarity=pool_similarity
    )
    result = recall_at_k(
        pool[query_ids], query_labels, pool[gallery_ids], gallery_labels, chunk_size=3
    )
    np.testing.assert_array_equal(result.first_hit_rank, reference)


def test_torch_inputs_and_string_labels():
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(15, 4)).astype(np.float32)
    query = rng.normal(size=(6, 4)).astype(np.float32)
    gallery_labels = rng.integers(0, 3, size=15)
    query_labels = rng.integers(0, 3, size=6)
    from_numpy = recall_at_k(query, query_labels, gallery, gallery_labels)
    from_torch = recall_at_k(
        torch.from_numpy(query), torch.from_numpy(query_labels),
        torch.from_numpy(gallery), torch.from_numpy(gallery_labels),
    )
    names = np.array(["run", "jump", "swim"])
    from_names = recall_at_k(query, names[query_labels], gallery, names[gallery_labels])
    np.testing.assert_array_equal(from_torch.first_hit_rank, from_numpy.first_hit_rank)
    np.testing.assert_array_equal(from_names.first_hit_rank, from_numpy.first_hit_rank)


def test_recall_from_ranks_by_hand():
    ranks = np.array([1.0, 3.0, np.inf, 2.0])
    recall = recall_from_ranks(ranks, ks=(1, 2, 3, 10), gallery_size=3)
    assert recall == {1: 0.25, 2: 0.5, 3: 0.75, 10: 0.75}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gallery": np.zeros((3, 5))}, "feature sizes differ"),
        ({"query": np.array([[np.nan, 1.0, 0.0, 0.0]])}, "NaN"),
        ({"query_labels": [0, 1]}, "query_labels must have shape"),
        ({"gallery_labels": ["a", "b", "c"]}, "both be numbers"),
        ({"ks": (0, 5)}, "positive integers"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"query": np.zeros((0, 4))}, "non-empty 2-D"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    args = {
        "query": np.ones((1, 4)),
        "query_labels": [0],
        "gallery": np.ones((3, 4)),
        "gallery_labels": [0, 1, 2],
    }
    args.update(kwargs)
    with pytest.raises(VididiError, match=message):
        recall_at_k(**args)


def unblocked_first_hit_ranks(query, query_labels, gallery, gallery_labels):
    """The implementation before gallery tiling (one query-chunk x whole-gallery block), verbatim in
    its arithmetic: the tiled version must reproduce it exactly."""
    query_t = torch.as_tensor(np.asarray(query, dtype=np.float64))
    gallery_t = torch.as_tensor(np.asarray(gallery, dtype=np.float64))
    _, codes = np.unique(np.concatenate([np.asarray(query_labels), np.asarray(gallery_labels)]), return_inverse=True)
    codes = torch.from_numpy(codes.astype(np.int64))
    query_codes, gallery_codes = codes[: len(query_t)], codes[len(query_t) :]
    gallery_n = torch.nn.functional.normalize(gallery_t, dim=1)
    gallery_index = torch.arange(gallery_n.shape[0])
    past_end = torch.full_like(gallery_index, gallery_n.shape[0])
    chunk = torch.nn.functional.normalize(query_t, dim=1)
    sim = chunk @ gallery_n.T
    same = query_codes[:, None] == gallery_codes[None, :]
    has_positive = same.any(dim=1)
    best_sim = torch.where(same, sim, torch.full_like(sim, -torch.inf)).amax(dim=1)
    at_best = same & (sim == best_sim[:, None])
    best_index = torch.where(at_best, gallery_index[None, :], past_end[None, :]).amin(dim=1)
    ahead = (sim > best_sim[:, None]) | (
        (sim == best_sim[:, None]) & (gallery_index[None, :] < best_index[:, None])
    )
    rank = 1.0 + ahead.sum(dim=1).to(torch.float64)
    return torch.where(has_positive, rank, torch.full_like(rank, torch.inf)).numpy()


def tie_heavy_case(seed: int):
    """Random continuous vectors mixed with scaled one-hot vectors (whose cosines are exactly 0 or 1
    on any CPU, so they tie exactly), a zero vector, and a class absent from the gallery."""
    rng = np.random.default_rng(seed)
    dims = 6
    def rows(n):
        out = rng.normal(size=(n, dims))
        onehot = rng.random(n) < 0.6
        axes = rng.integers(0, dims, size=n)
        out[onehot] = 0.0
        out[onehot, axes[onehot]] = rng.choice([1.0, 2.0, 3.0, 0.5], size=onehot.sum())
        return out
    gallery, query = rows(97), rows(23)
    gallery[5] = 0.0
    gallery_labels = rng.integers(0, 4, size=97)
    query_labels = rng.integers(0, 5, size=23)  # class 4 never occurs in the gallery
    query_labels[0] = 4
    return query, query_labels, gallery, gallery_labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gallery_tiling_reproduces_the_unblocked_implementation(seed):
    query, query_labels, gallery, gallery_labels = tie_heavy_case(seed)
    expected = unblocked_first_hit_ranks(query, query_labels, gallery, gallery_labels)
    assert np.isinf(expected[0]) and (expected[1:] >= 2).any()  # the case has misses and non-trivial ranks
    with np.errstate(invalid="ignore"):  # the zero vector's cosine is 0/0 in the reference
        reference = brute_force_first_hits(query, query_labels, gallery, gallery_labels)
    np.testing.assert_array_equal(np.isinf(expected), np.isinf(reference))
    for chunk_size, gallery_chunk_size in [(1024, None), (1024, 97), (5, 1), (7, 10), (23, 32), (1, 96)]:
        ranks = first_hit_ranks(
            query, query_labels, gallery, gallery_labels,
            chunk_size=chunk_size, gallery_chunk_size=gallery_chunk_size,
        )
        np.testing.assert_array_equal(ranks, expected)
        tiled = recall_at_k(
            query, query_labels, gallery, gallery_labels,
            chunk_size=chunk_size, gallery_chunk_size=gallery_chunk_size,
        )
        assert tiled.recall == recall_at_k(query, query_labels, gallery, gallery_labels).recall


def test_bad_gallery_chunk_size_raises():
    with pytest.raises(VididiError, match="gallery_chunk_size"):
        first_hit_ranks(np.ones((2, 2)), [0, 1], np.ones((3, 2)), [0, 1, 1], gallery_chunk_size=0)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_device_path_gives_the_same_ranks_on_ties(seed, device):
    """The retrieval stage's device path (`device=` the configured device, features handed over as
    float32 tensors already on it) ranks exactly as the numpy path on tie-heavy inputs (one-hot
    cosines are exact in float64 on any device), tiled or not."""
    query, query_labels, gallery, gallery_labels = tie_heavy_case(seed)
    expected = unblocked_first_hit_ranks(query, query_labels, gallery, gallery_labels)
    q = torch.as_tensor(query, dtype=torch.float32, device=device)
    g = torch.as_tensor(gallery, dtype=torch.float32, device=device)
    for gallery_chunk_size in (None, 10):
        ranks = first_hit_ranks(q, query_labels, g, gallery_labels, chunk_size=7, device=device,
                                gallery_chunk_size=gallery_chunk_size)  # fmt: skip
        # one-hot queries: every cosine exact (0 or 1) whatever the input precision, so the ranks of the
        # float64 reference, ties included
        onehot_queries = np.count_nonzero(query, axis=1) <= 1
        assert onehot_queries.sum() >= 5
        np.testing.assert_array_equal(ranks[onehot_queries], expected[onehot_queries])
        np.testing.assert_array_equal(ranks, first_hit_ranks(query.astype(np.float32), query_labels, gallery.astype(np.float32),
                                                             gallery_labels, chunk_size=7, gallery_chunk_size=gallery_chunk_size))  # fmt: skip
