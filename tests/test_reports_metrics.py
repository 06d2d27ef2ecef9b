"""Report metrics and gates: hand-checkable cases and an independent loop-by-loop computation."""

from __future__ import annotations

import numpy as np
import pytest

from retrainer.reports.gates import check_gates, failure_message
from retrainer.reports.metrics import confusion_matrix, split_metrics


def one_hot(predictions: list[int], num_classes: int) -> np.ndarray:
    probabilities = np.full((len(predictions), num_classes), 0.01, np.float32)
    probabilities[np.arange(len(predictions)), predictions] = 0.9
    return probabilities


def test_hand_checked_three_classes():
    truth = [0, 0, 1, 1, 2, 2, 2]
    predicted = [0, 1, 1, 1, 2, 0, 2]
    metrics = split_metrics(np.array(truth), one_hot(predicted, 3))
    assert metrics.confusion_matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert metrics.count == metrics.unique_images == 7
    assert metrics.accuracy == pytest.approx(5 / 7)
    assert [row.precision for row in metrics.per_class] == pytest.approx([1 / 2, 2 / 3, 1])
    assert [row.recall for row in metrics.per_class] == pytest.approx([1 / 2, 1, 2 / 3])
    assert [row.f1 for row in metrics.per_class] == pytest.approx([0.5, 0.8, 0.8])
    assert [row.support for row in metrics.per_class] == [2, 2, 3]
    assert metrics.balanced_accuracy == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert metrics.top_k is None and metrics.top_k_accuracy is None  # only 3 classes
    assert metrics.most_confused() == [(0, 1, 1), (2, 0, 1)]  # ties in label order


def test_undefined_ratios_are_none_not_zero():
    # class 1 has examples but is never predicted; class 2 has no examples and is never predicted.
    metrics = split_metrics(np.array([0, 1, 1]), one_hot([0, 0, 0], 3))
    never_predicted, absent = metrics.per_class[1], metrics.per_class[2]
    assert (never_predicted.precision, never_predicted.recall, never_predicted.f1) == (None, 0.0, 0.0)
    assert (absent.precision, absent.recall, absent.f1, absent.support) == (None, None, None, 0)
    assert metrics.balanced_accuracy == pytest.approx(0.5)  # mean over classes with examples


def test_an_empty_split_has_no_ratios():
    metrics = split_metrics(np.zeros(0, np.int64), np.zeros((0, 7), np.float32))
    assert (metrics.count, metrics.accuracy, metrics.balanced_accuracy) == (0, None, None)
    assert metrics.top_k == 5 and metrics.top_k_accuracy is None
    assert metrics.confusion_matrix.shape == (7, 7) and not metrics.confusion_matrix.any()


def test_top_5_with_more_than_5_classes():
    # true class 0 ranked 1st, 5th and 6th in three examples.
    probabilities = np.array([
        [0.9, 0.02, 0.02, 0.02, 0.02, 0.01, 0.01],
        [0.10, 0.30, 0.20, 0.15, 0.12, 0.08, 0.05],
        [0.05, 0.30, 0.20, 0.15, 0.12, 0.10, 0.08],
    ])
    metrics = split_metrics(np.array([0, 0, 0]), probabilities)
    assert metrics.top_k == 5 and metrics.top_k_accuracy == pytest.approx(2 / 3)


def test_unique_images_counts_a_repeated_sample_once():
    metrics = split_metrics(np.array([0, 0, 1]), one_hot([0, 0, 1], 2), positions=np.array([4, 4, 9]))
    assert (metrics.count, metrics.unique_images) == (3, 2)


def test_agrees_with_an_independent_loop_computation():
    rng = np.random.default_rng(12)
    num_classes, count = 8, 300
    truth = rng.integers(0, num_classes, count)
    logits = rng.normal(size=(count, num_classes)) + 2.0 * np.eye(num_classes)[truth]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    metrics = split_metrics(truth, probabilities)

    predicted = [max(range(num_classes), key=lambda c: probabilities[i][c]) for i in range(count)]
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for true, guess in zip(truth, predicted):
        matrix[true][guess] += 1
    assert metrics.confusion_matrix.tolist() == matrix
    assert int(metrics.confusion_matrix.sum()) == count
    assert metrics.accuracy == pytest.approx(sum(matrix[c][c] for c in range(num_classes)) / count)
    recalls = []
    for c in range(num_classes):
        tp = matrix[c][c]
        fp = sum(matrix[r][c] for r in range(num_classes)) - tp
        fn = sum(matrix[c]) - tp
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        recalls.append(recall)
        row = metrics.per_class[c]
        assert row.precision == pytest.approx(precision) and row.recall == pytest.approx(recall)
        assert row.f1 == pytest.approx(2 * precision * recall / (precision + recall))
        assert row.support == tp + fn
    assert metrics.balanced_accuracy == pytest.approx(sum(recalls) / num_classes)
    in_top_5 = sum(truth[i] in sorted(range(num_classes), key=lambda c: -probabilities[i][c])[:5]
                   for i in range(count))
    assert metrics.top_k_accuracy == pytest.approx(in_top_5 / count)
    assert 0 < metrics.accuracy < metrics.top_k_accuracy < 1  # a case that can tell them apart


def test_confusion_matrix_rows_are_true_columns_predicted():
    assert confusion_matrix(np.array([0, 0, 1]), np.array([1, 1, 1]), 2).tolist() == [[0, 2], [0, 1]]


def test_gates_pass_fail_and_explain():
    metrics = split_metrics(np.array([0, 0, 1, 1]), one_hot([0, 1, 1, 1], 2))  # 75 %, recall 50 %
    labels = ("cat", "dog")
    passed = check_gates(0.75, 0.5, "testing", metrics, labels)
    assert all(gate.passed for gate in passed) and failure_message(passed) is None
    failed = check_gates(0.9, 0.6, "testing", metrics, labels)
    message = failure_message(failed)
    assert message.startswith("accuracy 75.00% on the test split (N=4) is below "
                              "--assert_accuracy_at_least 0.9 (90.00%)")
    assert message.endswith("(1 more gate failed)")
    recall = failure_message(check_gates(None, 0.6, "validation", metrics, labels))
    assert recall.startswith("recall of class 'cat' 50.00% on the validation split (N=4) is below "
                             "--assert_recall_at_least 0.6")
    empty = split_metrics(np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
    unmeasured = check_gates(0.1, None, None, empty, labels)
    assert not unmeasured[0].passed and "cannot be checked" in failure_message(unmeasured)
