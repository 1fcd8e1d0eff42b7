"""Tests for vididi.evaluation.probe: accuracy on easy/hopeless data, no test leakage, hand-worked top-k."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import vididi.evaluation.probe as probe
from vididi.evaluation.probe import linear_probe, select_regularisation, stratified_split, top_k_accuracy
from vididi.utils import VididiError

SMALL_CS = (0.01, 1.0, 100.0)


def separable_data(rng, n_per_class, n_classes=4, dims=8):
    centres = 10.0 * np.eye(n_classes, dims)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[labels] + rng.normal(scale=0.5, size=(labels.size, dims))
    return features, labels


def test_separable_features_reach_full_accuracy():
    rng = np.random.default_rng(0)
    train_x, train_y = separable_data(rng, 20)
    test_x, test_y = separable_data(rng, 10)
    result = linear_probe(train_x, train_y, test_x, test_y, Cs=SMALL_CS, seed=0)
    assert result["top1"] == 1.0
    assert result["top5"] == 1.0
    assert result["top5_k"] == 4  # only 4 classes: "top-5" is top-4
    assert result["n_train"] == 80 and result["n_test"] == 40 and result["n_classes"] == 4
    assert result["n_test_unseen_class"] == 0
    assert set(result["val_scores"]) == set(SMALL_CS)
    assert result["C"] in SMALL_CS


def test_random_features_are_near_chance():
    rng = np.random.default_rng(1)
    n_classes = 5
    train_x, test_x = rng.normal(size=(300, 16)), rng.normal(size=(500, 16))
    train_y, test_y = rng.integers(0, n_classes, 300), rng.integers(0, n_classes, 500)
    result = linear_probe(train_x, train_y, test_x, test_y, Cs=SMALL_CS, seed=0)
    # Chance is 0.2 for top-1; 500 test samples give a standard error of about 0.018.
    assert 0.12 < result["top1"] < 0.28
    assert result["top5"] == 1.0  # 5 classes: every label is in the top 5


def test_test_classes_missing_from_train_count_as_errors():
    rng = np.random.default_rng(2)
    train_x, train_y = separable_data(rng, 15, n_classes=3)
    test_x, test_y = separable_data(rng, 10, n_classes=4)  # class 3 never seen in training
    result = linear_probe(train_x, train_y, test_x, test_y, Cs=SMALL_CS)
    assert result["n_test_unseen_class"] == 10
    assert result["n_classes"] == 3
    assert result["top1"] == pytest.approx(30 / 40)
    assert result["top5"] == pytest.approx(30 / 40)


def test_string_labels():
    rng = np.random.default_rng(3)
    names = np.array(["jump", "run", "swim"])
    train_x, train_y = separable_data(rng, 10, n_classes=3)
    test_x, test_y = separable_data(rng, 5, n_classes=3)
    result = linear_probe(train_x, names[train_y], test_x, names[test_y], Cs=SMALL_CS)
    assert result["top1"] == 1.0


def test_selection_never_sees_the_test_split(monkeypatch):
    rng = np.random.default_rng(4)
    train_x, train_y = separable_data(rng, 20)
    # Test features far outside the train range: any fit that saw a test row would be detectable,
    # raw (values near 1000) or standardised with train statistics (values in the thousands).
    test_x, test_y = separable_data(rng, 10)
    test_x = test_x + 1000.0

    selection_calls = []
    real_select = probe.select_regularisation

    def spy_select(*args, **kwargs):
        selection_calls.append((args, kwargs))
        return real_select(*args, **kwargs)

    fitted_inputs = []

    class SpyScaler(StandardScaler):
        def fit(self, X, y=None, sample_weight=None):
            fitted_inputs.append(np.array(X))
            return super().fit(X, y, sample_weight)

    class SpyLogisticRegression(LogisticRegression):
        def fit(self, X, y, sample_weight=None):
            fitted_inputs.append(np.array(X))
            return super().fit(X, y, sample_weight)

    monkeypatch.setattr(probe, "select_regularisation", spy_select)
    monkeypatch.setattr(probe, "StandardScaler", SpyScaler)
    monkeypatch.setattr(probe, "LogisticRegression", SpyLogisticRegression)
    linear_probe(train_x, train_y, test_x, test_y, Cs=SMALL_CS, seed=0)

    assert len(selection_calls) == 1
    args, kwargs = selection_calls[0]
    passed = list(args) + list(kwargs.values())
    arrays = [a for a in passed if isinstance(a, np.ndarray)]
    assert len(arrays) == 2
    np.testing.assert_array_equal(arrays[0], train_x)
    np.testing.assert_array_equal(arrays[1], train_y)
    # 1 scaler + 3 classifiers during selection, then 1 scaler + 1 classifier for the refit.
    assert len(fitted_inputs) == 6
    for X in fitted_inputs:
        assert np.abs(X).max() < 100.0


def test_selection_result_does_not_depend_on_the_test_split():
    rng = np.random.default_rng(5)
    train_x, train_y = rng.normal(size=(120, 6)), rng.integers(0, 3, 120)
    train_x[:, 0] += train_y  # weak signal so that the Cs score differently
    good_test = (rng.normal(size=(30, 6)), rng.integers(0, 3, 30))
    other_test = (rng.normal(size=(7, 6)) * 50, np.zeros(7, dtype=int))
    a = linear_probe(train_x, train_y, *good_test, Cs=SMALL_CS, seed=3)
    b = linear_probe(train_x, train_y, *other_test, Cs=SMALL_CS, seed=3)
    assert a["C"] == b["C"]
    assert a["val_scores"] == b["val_scores"]
    assert select_regularisation(train_x, train_y, SMALL_CS, 0.2, 3) == (a["C"], a["val_scores"])


def test_best_c_is_the_smallest_of_the_equally_best():
    rng = np.random.default_rng(6)
    train_x, train_y = separable_data(rng, 20)
    best_C, scores = select_regularisation(
        train_x, train_y, Cs=(100.0, 1.0, 0.01), val_fraction=0.25, seed=0
    )
    assert list(scores) == [100.0, 1.0, 0.01]
    assert all(score == 1.0 for score in scores.values())
    assert best_C == 0.01


def test_stratified_split_rule_for_tiny_classes():
    labels = np.array([7] * 1 + [8] * 2 + [9] * 10 + [6] * 3)
    fit, val = stratified_split(labels, val_fraction=0.2, seed=0)
    assert np.intersect1d(fit, val).size == 0
    assert np.union1d(fit, val).tolist() == list(range(labels.size))
    counts = {c: int(np.sum(labels[val] == c)) for c in (6, 7, 8, 9)}
    # 0.2*1 -> singleton stays in fit; 0.2*2 = 0.4 -> at least 1; 0.2*10 = 2; 0.2*3 = 0.6 -> 1.
    assert counts == {6: 1, 7: 0, 8: 1, 9: 2}
    again = stratified_split(labels, val_fraction=0.2, seed=0)
    np.testing.assert_array_equal(again[1], val)
    other_seeds = [stratified_split(labels, 0.2, seed)[1].tolist() for seed in range(1, 6)]
    assert any(v != val.tolist() for v in other_seeds)


def test_top_k_on_hand_made_probabilities():
    classes = np.array([10, 20, 30, 40, 50, 60])
    probabilities = np.array(
        [
            [0.50, 0.10, 0.10, 0.10, 0.10, 0.10],  # label 10: top-1 hit
            [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # label 50: 5th most probable -> top-5 hit only
            [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # label 60: 6th -> miss for both
            [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],  # label 20: tie with 10, column order puts 10 first
            [0.10, 0.10, 0.10, 0.10, 0.10, 0.50],  # label 99: not a known class -> miss
        ]
    )
    labels = np.array([10, 50, 60, 20, 99])
    assert top_k_accuracy(probabilities, classes, labels, 1) == pytest.approx(1 / 5)
    assert top_k_accuracy(probabilities, classes, labels, 2) == pytest.approx(2 / 5)
    assert top_k_accuracy(probabilities, classes, labels, 5) == pytest.approx(3 / 5)
    assert top_k_accuracy(probabilities, classes, labels, 6) == pytest.approx(4 / 5)
    assert top_k_accuracy(probabilities, classes, labels, 50) == pytest.approx(4 / 5)  # clamped to 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_y": np.zeros(40, dtype=int)}, "at least 2 classes"),
        ({"test_x": np.zeros((5, 3))}, "feature sizes differ"),
        ({"Cs": (1.0, -1.0)}, "positive finite"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"train_y": np.arange(40)}, "no class has 2 or more"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    rng = np.random.default_rng(7)
    args = {
        "train_x": rng.normal(size=(40, 4)),
        "train_y": rng.integers(0, 2, 40),
        "test_x": rng.normal(size=(5, 4)),
        "test_y": rng.integers(0, 2, 5),
        "Cs": SMALL_CS,
    }
    args.update(kwargs)
    with pytest.raises(VididiError, match=message):
        linear_probe(**args)


# --------------------------------------------------------------------------------------------------
# The torch solver (evaluation.probe.solver: torch) against scikit-learn, the reference


def overlapping_clusters(rng, centres: np.ndarray, n: int, separation: float):
    """Gaussian class clusters around `centres` that overlap: the Bayes accuracy is well below 1, so the
    probe's answer depends on the fitted boundary, not just on separability."""
    labels = rng.integers(0, len(centres), n)
    return rng.normal(size=(n, centres.shape[1])) + separation * centres[labels], labels


@pytest.mark.parametrize("n_classes,separation", [(8, 0.6), (2, 0.4), (20, 0.35)])
def test_torch_probe_agrees_with_sklearn(n_classes, separation):
    """The probe-agreement test: same split, scaler, C grid and rule; top-1 within 1 point of
    scikit-learn's (both minimise the same strictly convex objective and stop at the same gradient
    tolerance, so they differ only by where each stops), the same C chosen."""
    rng = np.random.default_rng(n_classes)
    centres = rng.normal(size=(n_classes, 32))
    x, y = overlapping_clusters(rng, centres, 60 * n_classes, separation)
    tx, ty = overlapping_clusters(rng, centres, 30 * n_classes, separation)
    reference = linear_probe(x, y, tx, ty, Cs=(1e-3, 1e-2, 1e-1, 1.0), seed=0)
    torch_probe = linear_probe(x, y, tx, ty, Cs=(1e-3, 1e-2, 1e-1, 1.0), seed=0, solver="torch", device="cpu")
    assert 0.3 < reference["top1"] < 0.99  # a case with a real answer
    assert abs(torch_probe["top1"] - reference["top1"]) <= 0.01
    assert abs(torch_probe["top5"] - reference["top5"]) <= 0.01
    assert torch_probe["C"] == reference["C"] and torch_probe["final_fit_converged"]


@pytest.mark.parametrize("n_classes", [2, 5])
def test_torch_solver_reaches_sklearns_optimum(n_classes):
    """At a well-conditioned C both solvers find the unique minimiser: the same coefficients (2 classes:
    scikit-learn's binary layout, through the C / 2 equivalence), to the stopping tolerance."""
    rng = np.random.default_rng(3)
    x, y = overlapping_clusters(rng, rng.normal(size=(n_classes, 10)), 200, 0.8)
    x = StandardScaler().fit_transform(x)
    reference = LogisticRegression(C=0.05, solver="lbfgs", max_iter=1000, tol=1e-8).fit(x, y)
    fitted = probe.TorchLogisticRegression(C=0.05, tol=1e-8, device="cpu").fit(x, y)
    assert fitted.coef_.shape == reference.coef_.shape and fitted.converged
    np.testing.assert_allclose(fitted.coef_, reference.coef_, atol=1e-4)
    np.testing.assert_array_equal(fitted.predict(x), reference.predict(x))
    np.testing.assert_allclose(fitted.predict_proba(x), reference.predict_proba(x), atol=1e-4)


def test_unknown_solver_is_a_clear_error():
    x, y = separable_data(np.random.default_rng(0), 5)
    with pytest.raises(VididiError, match="unknown probe solver"):
        linear_probe(x, y, x, y, Cs=SMALL_CS, solver="cuml")
