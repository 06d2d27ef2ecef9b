"""The convex head solver on real Fashion-MNIST pixels: it reaches the penalised optimum (checked
against an independent float64 fit), chooses on validation only, and survives degenerate arrays."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from retrainer.training import solver
from retrainer.training.convex import NO_VALIDATION_L2, ConvexConfig, fit_head
from retrainer.training.objectives import SIGMOID
from retrainer.training.solver import MIN_RELATIVE_SCALE
from tests.fixtures_data import fashion_mnist_idx_dir, fashion_mnist_module


@pytest.fixture(scope="module")
def pixels() -> tuple[np.ndarray, np.ndarray]:
    """1,200 real Fashion-MNIST images as float32 [N, 196] rows (14 x 14, 2 x 2 means of the
    pixels, in [0, 1]) and their labels."""
    module = fashion_mnist_module()
    images_path, labels_path = (fashion_mnist_idx_dir() / name
                                for name in module.IDX_FILES["train"])
    labels = module.read_labels(labels_path)[:1200].astype(np.int64)
    images = module.read_images(images_path, 1200).reshape(1200, 14, 2, 14, 2).mean(axis=(2, 4))
    return (images.reshape(1200, -1) / 255.0).astype(np.float32), labels


def penalised_loss(features, labels, weights, biases, l2, scale) -> float:
    """Mean softmax cross entropy + l2 * |weights on standardized features|^2, in float64."""
    logits = features.astype(np.float64) @ weights + biases
    logits -= logits.max(axis=1, keepdims=True)
    log_probabilities = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -log_probabilities[np.arange(len(labels)), labels].mean()
    return float(loss + l2 * ((weights * scale[:, np.newaxis]) ** 2).sum())


def reference_optimum(features, labels, classes, l2, scale) -> float:
    """The penalised loss's minimum, by a float64 scipy fit written independently of the solver
    (on standardized features, where L-BFGS converges; the minimum is the same)."""
    standardized = (features - features.mean(axis=0)) / scale
    dims = features.shape[1]

    def loss_and_gradient(flat):
        weights, biases = flat[:dims * classes].reshape(dims, classes), flat[dims * classes:]
        logits = standardized @ weights + biases
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        value = -np.log(probabilities[np.arange(len(labels)), labels]).mean()
        residual = probabilities
        residual[np.arange(len(labels)), labels] -= 1
        residual /= len(labels)
        gradient_w = standardized.T @ residual + 2 * l2 * weights
        value += l2 * (weights ** 2).sum()
        return value, np.concatenate([gradient_w.ravel(), residual.sum(axis=0)])

    with threadpool_limits(limits=1, user_api="blas"):
        solution = minimize(loss_and_gradient, np.zeros(dims * classes + classes), jac=True,
                            method="L-BFGS-B", options={"maxiter": 3000, "ftol": 1e-12,
                                                        "gtol": 1e-8})
    assert solution.success, solution.message
    return float(solution.fun)


def training_scale(features: np.ndarray) -> np.ndarray:
    """The spread the penalty is measured in: the std, at least MIN_RELATIVE_SCALE x the median
    std (constant features: 1)."""
    scale = features.std(axis=0, dtype=np.float64)
    floor = MIN_RELATIVE_SCALE * np.sort(scale)[len(scale) // 2]
    return np.where(scale > 1e-6, np.maximum(scale, floor), 1.0)


def test_a_fixed_penalty_reaches_the_optimum(pixels):
    features, labels = pixels[0][:600].astype(np.float64), pixels[1][:600]
    fit = fit_head(features.astype(np.float32), labels, features[:0], labels[:0], 10,
                   ConvexConfig(l2_path=(1e-2,)))
    scale = training_scale(features)
    reached = penalised_loss(features, labels, fit.weights.astype(np.float64),
                             fit.biases.astype(np.float64), 1e-2, scale)
    optimum = reference_optimum(features, labels, 10, 1e-2, scale)
    assert optimum <= reached < optimum + 1e-3  # (zero weights: 2.3; one more decade: 1e-2)
    assert fit.l2 == 1e-2 and len(fit.path) == 1 and fit.chosen == 0


@pytest.mark.parametrize("keep_classes", [64, 0])
def test_a_split_in_many_chunks_reaches_the_same_optimum(pixels, monkeypatch, keep_classes):
    """Rows taken a few at a time (as a million rows of 1,000 classes are, to bound the logits
    held at once), kept as tensors or converted on every pass: the same penalised optimum and
    validation figures as one pass over every row."""
    features, labels = pixels[0][:700], pixels[1][:700]
    # the sample: rows picked; its fits run to the final fit's tolerance, so that summing in
    # other chunks cannot tip the 100-row validation's choice
    config = ConvexConfig(l2_path=(1e-2, 1e-3), path_rows=400, path_tolerance=1e-5)
    whole = fit_head(features[:600], labels[:600], features[600:], labels[600:], 10, config)
    monkeypatch.setattr(solver, "CHUNK_VALUES", 10 * 64)  # 64 rows a chunk: 10 and 2 chunks
    monkeypatch.setattr(solver, "KEEP_CLASSES", keep_classes)
    chunked = fit_head(features[:600], labels[:600], features[600:], labels[600:], 10, config)
    sample = np.sort(np.random.default_rng(0).permutation(600)[:400])
    scale = training_scale(features[:600][sample].astype(np.float64))  # the path's statistics
    for fit in (whole, chunked):
        reached = penalised_loss(features[:600].astype(np.float64), labels[:600],
                                 fit.weights.astype(np.float64), fit.biases.astype(np.float64),
                                 fit.l2, scale)
        assert reached < reference_optimum(features[:600], labels[:600], 10, fit.l2, scale) + 1e-3
    assert chunked.l2 == whole.l2
    for mine, theirs in zip(chunked.path, whole.path):
        assert mine.validation_accuracy == pytest.approx(theirs.validation_accuracy, abs=0.021)
        assert mine.train_cross_entropy == pytest.approx(theirs.train_cross_entropy, abs=2e-3)


def per_class_int8(weights: np.ndarray) -> np.ndarray:
    """The layer as int8 weight quantization leaves it: one symmetric scale per class."""
    scale = np.abs(weights).max(axis=0, keepdims=True) / 127
    return np.round(weights / scale) * scale


def test_a_barely_varying_feature_gets_no_outsized_weight(pixels):
    """A feature that is almost always 0 but marks some images of one class (as int8 vectors
    have) must not get a weight that sets the int8 scale of its class: rounding the layer to
    int8 per class keeps its accuracy."""
    features, labels = pixels[0].copy(), pixels[1]
    rare = np.zeros(len(labels), np.float32)
    rare[np.flatnonzero(labels == 3)[:12]] = 0.02  # a tiny spread, but telling
    features = np.c_[features, rare]
    train, validation, test = slice(0, 700), slice(700, 900), slice(900, 1200)
    fit = fit_head(features[train], labels[train], features[validation], labels[validation], 10)
    weights = fit.weights
    assert np.abs(weights).max() < 50 * np.abs(weights).mean()  # without the floor: 246x
    accuracy = ((features[test] @ weights + fit.biases).argmax(1) == labels[test]).mean()
    rounded = ((features[test] @ per_class_int8(weights) + fit.biases).argmax(1)
               == labels[test]).mean()
    assert rounded >= accuracy - 0.01, (accuracy, rounded)


def test_the_path_chooses_on_validation_and_samples_large_splits(pixels):
    """A path on a 300-row sample, then the whole 900 rows at the rescaled penalty of the best
    (validation accuracy, then cross entropy), fitted to the optimum."""
    features, labels = pixels
    train, validation = slice(0, 900), slice(900, 1200)
    # The path's fits to the final fit's tolerance: L-BFGS stops on the loss's relative change,
    # so how near the optimum it stops depends on the start; that is compared below.
    config = ConvexConfig(path_rows=300, path_tolerance=1e-5)
    fit = fit_head(features[train], labels[train], features[validation], labels[validation], 10,
                   config)
    default = fit_head(features[train], labels[train], features[validation], labels[validation],
                       10, ConvexConfig(path_rows=300))
    assert default.l2 == fit.l2  # the default path's looser fits choose the same penalty
    assert default.path[-1].validation_accuracy == pytest.approx(
        fit.path[-1].validation_accuracy, abs=2 / 300)
    sampled, final = fit.path[:-1], fit.path[-1]
    assert fit.chosen == len(fit.path) - 1 and fit.l2 == final.l2
    best = max(sampled, key=lambda point: (point.validation_accuracy,
                                           -point.validation_cross_entropy))
    assert final.l2 == pytest.approx(best.l2 * 300 / 900)
    assert final.validation_accuracy > 0.7
    full = features[train].astype(np.float64)
    # The final fit standardizes by the sample's statistics (same as the path's penalty).
    rows = np.sort(np.random.default_rng(0).permutation(900)[:300])
    scale = training_scale(features[train][rows])
    reached = penalised_loss(full, labels[train], fit.weights.astype(np.float64),
                             fit.biases.astype(np.float64), final.l2, scale)
    optimum = reference_optimum(full, labels[train], 10, final.l2, scale)
    assert optimum <= reached < optimum + 1e-3


@pytest.mark.parametrize("path_rows", [300, 900])
def test_a_large_validation_split_is_sampled_for_the_path_only(pixels, path_rows):
    """Above validation_values // classes validation rows the path scores its penalties on a
    seeded sample of that many (here 100 of 300: accuracies in hundredths); the kept fit (the
    final fit on every training row, or without one the path's chosen point) on every row."""
    features, labels = pixels
    train, validation = slice(0, 900), slice(900, 1200)
    fit = fit_head(features[train], labels[train], features[validation], labels[validation], 10,
                   ConvexConfig(path_rows=path_rows, validation_values=10 * 100))
    logits = features[validation] @ fit.weights + fit.biases
    kept = fit.path[fit.chosen]
    assert kept.validation_accuracy == pytest.approx(
        np.mean(np.argmax(logits, axis=1) == labels[validation]))
    for index, point in enumerate(fit.path):
        shown = point.validation_accuracy * (300 if index == fit.chosen else 100)
        assert shown == pytest.approx(round(shown), abs=1e-9)
    assert 0.7 < kept.validation_accuracy


def test_the_final_fit_is_capped_by_rows_times_classes(pixels):
    """Above fit_values rows x classes the final fit runs on a seeded sample of fit_values //
    classes rows that holds the path's sample, at the penalty rescaled to that many rows, and
    reaches the optimum there."""
    features, labels = pixels
    train, validation = slice(0, 900), slice(900, 1200)
    fit = fit_head(features[train], labels[train], features[validation], labels[validation], 10,
                   ConvexConfig(path_rows=200, fit_values=5000))
    sampled, final = fit.path[:-1], fit.path[-1]
    best = max(sampled, key=lambda point: (point.validation_accuracy,
                                           -point.validation_cross_entropy))
    assert fit.chosen == len(fit.path) - 1 and final.l2 == pytest.approx(best.l2 * 200 / 500)
    order = np.random.default_rng(0).permutation(900)
    rows = np.sort(order[:500])
    assert set(order[:200]) <= set(rows)
    scale = training_scale(features[train][np.sort(order[:200])])
    reached = penalised_loss(features[train][rows].astype(np.float64), labels[train][rows],
                             fit.weights.astype(np.float64), fit.biases.astype(np.float64),
                             final.l2, scale)
    optimum = reference_optimum(features[train][rows], labels[train][rows], 10, final.l2, scale)
    assert optimum <= reached < optimum + 1e-3
    assert final.validation_accuracy > 0.7


def test_without_validation_the_default_penalty_is_used(pixels, caplog):
    features, labels = pixels[0][:200], pixels[1][:200]
    with caplog.at_level(logging.WARNING, logger="retrainer.training.convex"):
        fit = fit_head(features, labels, features[:0], labels[:0], 10)
    assert fit.l2 == NO_VALIDATION_L2 and len(fit.path) == 1
    assert fit.path[0].validation_accuracy is None
    assert any("cannot be chosen" in message for message in caplog.messages)


def test_sigmoid_targets(pixels):
    """Multi-label targets (several 0/1 columns per row): each garment class plus 'is footwear'."""
    features, labels = pixels[0][:600], pixels[1][:600]
    targets = np.zeros((600, 11), np.float32)
    targets[np.arange(600), labels] = 1
    targets[:, 10] = np.isin(labels, [5, 7, 9])  # sandal, sneaker, ankle boot
    fit = fit_head(features[:500], targets[:500], features[500:], targets[500:], 11,
                   ConvexConfig(objective=SIGMOID))
    predicted = (features[500:] @ fit.weights + fit.biases) > 0
    assert (predicted[:, 10] == targets[500:, 10].astype(bool)).mean() > 0.95
    assert fit.path[fit.chosen].validation_accuracy > 0.9


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 12), dims=st.integers(1, 6), classes=st.integers(2, 4),
       validation_rows=st.integers(0, 5), constant=st.booleans(), seed=st.integers(0, 2**16))
def test_degenerate_arrays_give_finite_layers(rows, dims, classes, validation_rows, constant,
                                              seed):
    """One row, constant features, classes absent from the training rows, no validation."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows + validation_rows, dims)).astype(np.float32)
    if constant:
        features[:] = 3.0
    labels = rng.integers(0, classes, rows + validation_rows).astype(np.int64)
    fit = fit_head(features[:rows], labels[:rows], features[rows:], labels[rows:], classes,
                   ConvexConfig(l2_path=(1e-1, 1e-2), path_rows=8))
    assert fit.weights.shape == (dims, classes) and fit.biases.shape == (classes,)
    assert np.isfinite(fit.weights).all() and np.isfinite(fit.biases).all()
