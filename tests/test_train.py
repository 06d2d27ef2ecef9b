"""Head training, sampling and evaluation on real (tiny_test) features of generated and real images."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf

from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.training._sampling import WHOLE_SET, BalancedSampler, stream_seed
from retrainer.training.evaluate import evaluate_head
from retrainer.training.head import train_head
from retrainer.training.head_layer import HeadLayer, initial_head
from retrainer.training.head_types import FeatureSet, TrainingConfig
from tests.fixtures_data import make_color_image_dir

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "grey": (128, 128, 128)}


@pytest.fixture(scope="module")
def color_features(tmp_path_factory) -> FeatureSet:
    """tiny_test vectors of 4 colour classes x 12 generated images."""
    from tests.fixtures_extractors import TinyExtractor

    root = make_color_image_dir(tmp_path_factory.mktemp("train") / "images", COLORS, per_class=12)
    paths = sorted(root.rglob("*.png"))
    names = list(COLORS)
    labels = np.array([names.index(path.parent.name) for path in paths], np.int64)
    result = compute_bottlenecks(paths, TinyExtractor(), tmp_path_factory.mktemp("cache"))
    return FeatureSet(result.vectors, labels)


def subset(features: FeatureSet, mask: np.ndarray) -> FeatureSet:
    return FeatureSet(features.features[mask], features.labels[mask])


def config(**overrides) -> TrainingConfig:
    settings = {"steps": 60, "learning_rate": 0.5, "train_batch_size": 16,
                "validation_batch_size": 10, "eval_step_interval": 10, "seed": 0}
    settings.update(overrides)
    return TrainingConfig(**settings)


def test_learns_separable_classes(color_features):
    result = train_head(color_features, color_features, 4, config(steps=200))
    probabilities = result.head.probabilities(color_features.features)
    assert (probabilities.argmax(1) == color_features.labels).mean() == 1.0
    assert result.history[-1].train_accuracy == 1.0
    assert result.history[-1].cross_entropy < result.history[0].cross_entropy


def test_logs_like_retrain_py_at_each_interval_and_the_last_step(color_features, caplog):
    with caplog.at_level(logging.INFO, logger="retrainer.training"):
        result = train_head(color_features, color_features, 4, config(steps=25, eval_step_interval=10))
    assert [point.step for point in result.history] == [0, 10, 20, 24]
    for point in result.history:
        step = point.step
        assert f"Step {step}: Train accuracy = {point.train_accuracy * 100:.1f}%" in caplog.messages
        assert f"Step {step}: Cross entropy = {point.cross_entropy:f}" in caplog.messages
        assert f"Step {step}: Validation accuracy = {point.validation_accuracy * 100:.1f}% (N=10)" \
            in caplog.messages


def test_same_seed_same_numbers_however_steps_are_grouped(color_features):
    runs = [
        train_head(color_features, color_features, 4, config(eval_step_interval=interval), on_store,
                   store_every)
        for interval, on_store, store_every in [(10, None, 0), (10, None, 0), (1, None, 0),
                                                (60, lambda step, head: None, 7)]
    ]
    reference = runs[0].head.weights
    for run in runs[1:]:
        np.testing.assert_array_equal(run.head.weights, reference)
    assert runs[0].history == runs[1].history

    other_seed = train_head(color_features, color_features, 4, config(seed=1))
    assert not np.array_equal(other_seed.head.weights, reference)


def test_empty_validation_set_is_skipped_with_a_note(color_features, caplog):
    empty = subset(color_features, np.zeros(len(color_features), bool))
    with caplog.at_level(logging.INFO, logger="retrainer.training"):
        result = train_head(color_features, empty, 4, config(steps=11))
    assert all(point.validation_accuracy is None for point in result.history)
    assert any("No validation images" in message for message in caplog.messages)
    assert not any("Validation accuracy" in message for message in caplog.messages)


def test_classes_missing_from_validation_or_training(color_features):
    """retrain.py died (ZeroDivisionError) on a class with no validation images."""
    validation = subset(color_features, color_features.labels == 1)
    training = subset(color_features, color_features.labels != 3)  # class 3: no training images
    result = train_head(training, validation, 4, config(steps=30))
    assert result.history[-1].validation_count == 10
    predictions = result.head.probabilities(training.features).argmax(1)
    assert 3 not in predictions


def test_whole_set_batches(color_features):
    result = train_head(color_features, color_features, 4,
                        config(train_batch_size=WHOLE_SET, validation_batch_size=WHOLE_SET))
    assert result.history[-1].validation_count == len(color_features)
    assert result.history[-1].train_accuracy == 1.0


def test_intermediate_stores_at_retrain_py_steps(color_features):
    stored = []
    train_head(color_features, color_features, 4, config(steps=25),
               lambda step, head: stored.append((step, head.weights.copy())), 10)
    assert [step for step, _ in stored] == [10, 20]
    assert not np.array_equal(stored[0][1], stored[1][1])


def test_summaries_and_checkpoint(color_features, tmp_path):
    summaries = tmp_path / "logs"
    checkpoint = tmp_path / "checkpoint" / "head"
    settings = config(steps=21, summaries_dir=summaries, checkpoint_path=checkpoint)
    train_head(color_features, color_features, 4, settings)
    result = train_head(color_features, color_features, 4, settings)  # replaces the first's events

    def events(split: str) -> dict[str, list[int]]:
        (path,) = (summaries / split).glob("events.out.tfevents.*")
        steps: dict[str, list[int]] = {}
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
        return steps

    assert events("train") == {tag: [0, 10, 20] for tag in
                               ("accuracy", "cross_entropy", "final_weights", "final_biases")}
    assert events("validation") == {tag: [0, 10, 20] for tag in ("accuracy", "cross_entropy")}
    assert all(point.validation_cross_entropy > 0 for point in result.history)

    restored = HeadLayer(initial_head(16, 4, seed=99))
    tf.train.Checkpoint(head=restored).read(str(checkpoint)).expect_partial()
    np.testing.assert_array_equal(restored.weights.numpy(), result.head.weights)


def test_balanced_sampler_draws_classes_equally():
    labels = np.array([0] * 90 + [2] * 8 + [5] * 2)
    sampler = BalancedSampler(labels, 3000)
    indices = sampler.sample(stream_seed(0, 2), tf.constant(0, tf.int64)).numpy()
    counts = np.bincount(labels[indices], minlength=6)
    assert counts[[1, 3, 4]].sum() == 0
    assert np.all(np.abs(counts[[0, 2, 5]] - 1000) < 150)
    assert set(indices[labels[indices] == 5]) == {98, 99}
    whole = BalancedSampler(labels, WHOLE_SET).sample(stream_seed(0, 2), tf.constant(0, tf.int64))
    np.testing.assert_array_equal(whole.numpy(), np.arange(100))


def test_evaluation_counts_and_misclassified(color_features, caplog):
    head = train_head(color_features, color_features, 4, config(steps=3, learning_rate=0.01)).head
    with caplog.at_level(logging.INFO, logger="retrainer.training.evaluate"):
        evaluation = evaluate_head(head, color_features, 4, WHOLE_SET, seed=0)
    predictions = head.logits(color_features.features).argmax(1)
    truth = color_features.labels
    assert evaluation.accuracy == pytest.approx((predictions == truth).mean())
    assert evaluation.count == len(color_features)
    assert f"Final test accuracy = {evaluation.accuracy * 100:.1f}% (N={len(truth)})" in caplog.messages
    expected_wrong = [(index, int(predictions[index])) for index in np.flatnonzero(predictions != truth)]
    assert evaluation.misclassified(truth) == expected_wrong
    assert evaluation.per_class == tuple(
        (int(((predictions == truth) & (truth == c)).sum()), int((truth == c).sum())) for c in range(4)
    )


def test_evaluation_sample_and_empty_test_set(color_features, caplog):
    head = initial_head(16, 4, seed=0)
    sampled = evaluate_head(head, color_features, 4, 7, seed=3)
    assert sampled.count == 7 and len(sampled.positions) == 7
    with caplog.at_level(logging.WARNING, logger="retrainer.training.evaluate"):
        empty = evaluate_head(head, subset(color_features, np.zeros(len(color_features), bool)), 4,
                              WHOLE_SET, seed=0)
    assert (empty.accuracy, empty.count, empty.per_class) == (None, 0, ((0, 0),) * 4)
    assert empty.misclassified(np.zeros(0, np.int64)) == []
    assert any("No test images" in message for message in caplog.messages)
