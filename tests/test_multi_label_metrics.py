"""Multi-label metrics, per-label thresholds chosen on validation only, and the novelty score."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from retrainer.reports.multi_label import average_precision, multi_label_metrics
from retrainer.training.novelty import calibrate_threshold, fit_novelty
from retrainer.training.thresholds import DEFAULT_THRESHOLD, best_f1_threshold, choose_thresholds


def test_metrics_by_hand():
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    probabilities = np.array([[0.9, 0.2, 0.1], [0.6, 0.4, 0.3], [0.7, 0.8, 0.2],
                              [0.1, 0.1, 0.9]])
    metrics = multi_label_metrics(targets, probabilities, np.array([0.5, 0.5, 0.5]))
    # predicted: {0}, {0}, {0, 1}, {2}; true: {0}, {0, 1}, {1}, {}
    assert metrics.micro_f1 == pytest.approx(2 * 3 / (4 + 5))
    first, second, third = metrics.per_class
    assert (first.precision, first.recall, first.support) == (pytest.approx(2 / 3), 1.0, 2)
    assert (second.precision, second.recall, second.f1) == (1.0, 0.5, pytest.approx(2 / 3))
    assert third.recall is None and third.average_precision is None and third.f1 == 0.0
    assert metrics.macro_f1 == pytest.approx(np.mean([0.8, 2 / 3, 0.0]))
    assert metrics.exact_match == 0.25
    # label 1: scores 0.8 (pos), 0.4 (pos), 0.2, 0.1 -> AP 1; label 0: 0.9 (pos), 0.7, 0.6 (pos)
    assert second.average_precision == pytest.approx(1.0)
    assert first.average_precision == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.mean_average_precision == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    document = metrics.to_json(("a", "b", "c"))
    assert set(document) >= {"micro_f1", "macro_f1", "mean_average_precision", "exact_match",
                             "thresholds", "per_class"}
    assert document["thresholds"] == {"a": 0.5, "b": 0.5, "c": 0.5}


def test_average_precision_ignores_the_order_of_tied_scores():
    truth = np.array([True, False, True, False])
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    assert average_precision(truth, scores) == pytest.approx(2 / 3)
    assert average_precision(truth[::-1], scores[::-1]) == pytest.approx(2 / 3)
    assert average_precision(np.zeros(3, bool), np.ones(3)) is None


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.bool_, st.integers(1, 40)), st.data())
def test_best_threshold_reaches_the_best_f1_of_any_cut(truth, data):
    scores = data.draw(hnp.arrays(np.float32, truth.shape,
                                  elements=st.floats(0, 1, width=32)))
    chosen = best_f1_threshold(truth, scores)
    if not truth.any():
        assert chosen is None
        return

    def f1(threshold):
        predicted = scores >= threshold
        return 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())

    best = max(f1(value) for value in np.unique(scores))
    assert f1(chosen) == pytest.approx(best)


def test_thresholds_come_from_validation_alone():
    rng = np.random.default_rng(0)
    targets = rng.random((200, 3)) < 0.3
    probabilities = np.clip(targets * 0.35 + rng.random((200, 3)) * 0.6, 0, 1)
    probabilities[:, 2] = rng.random(200)
    targets[:, 2] = False  # no positive for label 2: it keeps the default
    chosen = choose_thresholds(targets, probabilities)
    assert chosen.dtype == np.float32 and chosen[2] == DEFAULT_THRESHOLD
    for label in (0, 1):
        assert chosen[label] == pytest.approx(best_f1_threshold(targets[:, label],
                                                                probabilities[:, label]))
    assert (choose_thresholds(targets, probabilities, fixed=0.3) == np.float32(0.3)).all()


def test_novelty_threshold_passes_the_asked_share_of_validation():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 32)) * 3
    groups = rng.integers(0, 4, 600)
    train = (centres[groups] + rng.normal(size=(600, 32))).astype(np.float32)
    validation = (centres[rng.integers(0, 4, 200)] + rng.normal(size=(200, 32))).astype(np.float32)
    far = rng.normal(size=(100, 32)).astype(np.float32) * 3 + 20
    novelty = fit_novelty(train, groups, validation, pass_rate=0.9, seed=0)
    assert novelty.calibrated_on == "validation" and novelty.calibration_count == 200
    assert (novelty.scores(validation) <= novelty.threshold).mean() >= 0.9
    assert (novelty.scores(far) > novelty.threshold).mean() > 0.9
    assert novelty.to_json()["threshold"] == novelty.threshold


def test_novelty_k_fits_the_smallest_class():
    """A class of 3 training images: k = 3, so its own new images pass and strangers do not
    (with k = 5 the 5th neighbour of a small-class image lies in another class)."""
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 32)) * 4
    groups = np.r_[np.zeros(40, int), np.ones(40, int), np.full(3, 2)]
    train = (centres[groups] + rng.normal(size=(83, 32)) * 0.3).astype(np.float32)
    val_groups = np.r_[np.zeros(8, int), np.ones(8, int), np.full(4, 2)]
    validation = (centres[val_groups] + rng.normal(size=(20, 32)) * 0.3).astype(np.float32)
    far = rng.normal(size=(50, 32)).astype(np.float32) * 4
    novelty = fit_novelty(train, groups, validation, pass_rate=0.95, seed=0)
    assert novelty.k == 3
    small = novelty.scores(validation[val_groups == 2])
    # its new images score like the other classes' (with k = 5: like strangers)
    assert small.max() < 3 * novelty.scores(validation[val_groups != 2]).max()
    assert small.max() < novelty.scores(far).min() / 10
    # multi-label targets: k is at most the rarest label's count (here: 3 images carry label 2,
    # all of them also label 0, their rows' rarest label)
    targets = np.zeros((83, 3), np.float32)
    targets[np.arange(83), groups] = 1.0
    targets[groups == 2, 0] = 1.0
    assert fit_novelty(train, targets, validation).k == 3
    assert (novelty.scores(far) > novelty.threshold).mean() > 0.9


def test_calibrate_threshold_edges():
    assert calibrate_threshold(np.array([3.0, 1.0, 2.0]), 1.0) == 3.0
    assert calibrate_threshold(np.array([3.0, 1.0, 2.0]), 0.5) == 2.0
    assert calibrate_threshold(np.array([]), 0.95) == float("inf")


def test_gates_read_micro_f1_and_label_recall_for_a_multi_label_model():
    from retrainer.reports.gates import check_gates
    from retrainer.reports.metrics import split_metrics

    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 1]])
    probabilities = np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.7], [0.6, 0.2]])
    measured = multi_label_metrics(targets, probabilities, np.array([0.5, 0.5]))
    top1 = split_metrics(np.array([0, 0, 1, 1]), probabilities)
    accuracy, recall = check_gates(0.7, 0.5, "testing", top1, ("a", "b"), measured)
    assert accuracy.metric == "micro_f1" and accuracy.value == pytest.approx(measured.micro_f1)
    assert accuracy.value == pytest.approx(2 * 3 / (5 + 4)) and not accuracy.passed
    assert "micro-F1 66.67% on the test split" in accuracy.message()
    assert (recall.label, recall.value, recall.passed) == ("b", pytest.approx(1 / 3), False)
    single, = check_gates(0.7, None, "testing", top1, ("a", "b"))
    assert single.metric == "accuracy" and single.value == top1.accuracy
