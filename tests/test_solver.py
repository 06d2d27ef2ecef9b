"""The TensorFlow-free layer solver (training/solver.py) and the numpy objectives it minimises:
exact gradients, finite layers on degenerate data, byte-identical reruns, no TensorFlow import."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrainer.training import solver
from retrainer.training.convex import ConvexConfig, fit_head
from retrainer.training.evaluate import evaluate_head
from retrainer.training.head_types import FeatureSet, Head
from retrainer.training.objectives import SIGMOID, SOFTMAX
from retrainer.training.solver import (
    Problem,
    SolverOptions,
    Standardization,
    fit_layer,
)

LIGHT_MODULES = ("retrainer.training.convex", "retrainer.training.objectives",
                 "retrainer.training.evaluate", "retrainer.training.solver",
                 "retrainer.audit.label_issues", "retrainer.training.head",
                 "retrainer.training.head_types", "retrainer.training.image_modes")


def test_the_solver_evaluation_and_label_model_import_no_tensorflow():
    code = ("import sys\n" + "".join(f"import {name}\n" for name in LIGHT_MODULES)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def reference_loss(objective, targets, logits, smoothing):
    """Mean cross entropy in float64, written from the definitions."""
    logits = logits.astype(np.float64)
    classes = logits.shape[1]
    if objective.multi_label:
        dense = targets * (1 - smoothing) + 0.5 * smoothing
        probabilities = 1 / (1 + np.exp(-logits))
        return float(-(dense * np.log(probabilities) + (1 - dense) * np.log1p(-probabilities))
                     .sum(axis=1).mean())
    dense = np.eye(classes)[targets] * (1 - smoothing) + smoothing / classes
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-(dense * log_probabilities).sum(axis=1).mean())


def drawn_problem(data, rows, dims, classes, multi_label):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, dims)).astype(np.float32) * rng.uniform(0.01, 5, dims)
    features[:, data.draw(st.integers(0, dims - 1), label="constant column")] = 2.5
    if multi_label:
        targets = (rng.uniform(size=(rows, classes)) < 0.3).astype(np.float32)
    else:
        targets = rng.integers(0, classes, rows).astype(np.int64)
    return features, targets, rng


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rows=st.integers(1, 40), dims=st.integers(1, 7),
       classes=st.integers(2, 6), multi_label=st.booleans(),
       smoothing=st.sampled_from([0.0, 0.1]), l2=st.sampled_from([0.0, 1e-3, 0.3]))
def test_the_gradient_matches_finite_differences(data, rows, dims, classes, multi_label,
                                                smoothing, l2):
    """The loss is the objective's definition (+ l2 |standardized W|^2), through the
    standardization folded into the layer, and its gradient matches central differences of that
    definition. The differences are taken in float64 on the standardized features: the folded
    float32 layer's loss moves by rounding alone more than a small step's difference resolves
    (one row: biases near 9 cancel logits near -9)."""
    features, targets, rng = drawn_problem(data, rows, dims, classes, multi_label)
    objective = SIGMOID if multi_label else SOFTMAX
    statistics = Standardization.of(features)
    problem = Problem(features, targets, classes, statistics, SolverOptions(objective, smoothing))
    params = rng.normal(scale=0.5, size=(dims + 1) * classes)
    loss, gradient = problem.loss_and_gradient(params, l2)
    weights, biases = statistics.layer(params)
    standard = params[:dims * classes]
    expected = (reference_loss(objective, targets, features @ weights + biases, smoothing)
                + l2 * float(standard @ standard))
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-5)
    standardized = ((features.astype(np.float64) - statistics.mean.astype(np.float64))
                    / statistics.scale.astype(np.float64))

    def defined_loss(point: np.ndarray) -> float:
        layer, offsets = point[:dims * classes].reshape(dims, classes), point[dims * classes:]
        return (reference_loss(objective, targets, standardized @ layer + offsets, smoothing)
                + l2 * float(point[:dims * classes] @ point[:dims * classes]))

    assert loss == pytest.approx(defined_loss(params), rel=1e-4, abs=1e-5)
    direction = rng.normal(size=params.shape)
    step = 1e-3
    numeric = (defined_loss(params + step * direction)
               - defined_loss(params - step * direction)) / (2 * step)
    assert gradient @ direction == pytest.approx(numeric, rel=2e-3, abs=2e-4)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(classes=st.integers(2, 120), dims=st.integers(1, 9), constant=st.booleans(),
       seed=st.integers(0, 2**16))
def test_one_row_per_class_and_constant_features_give_finite_layers(classes, dims, constant,
                                                                     seed):
    """A row per class (many classes), constant features: a finite layer that, at a weak
    penalty on varying features, separates the training rows."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(classes, dims)).astype(np.float32)
    if constant:
        features[:] = 1.0
    labels = np.arange(classes)
    fit = fit_layer(features, labels, classes, 1e-4)
    assert fit.weights.shape == (dims, classes) and fit.biases.shape == (classes,)
    assert np.isfinite(fit.weights).all() and np.isfinite(fit.biases).all()
    assert fit.weights.dtype == fit.biases.dtype == np.float32
    if not constant and dims >= classes:  # separable: every row is its own class's
        assert ((features @ fit.weights + fit.biases).argmax(1) == labels).all()


def test_reruns_give_byte_identical_layers():
    """The export memo keys frozen graphs by the layer's bytes: the same inputs, the same bytes
    (both cores' products included)."""
    rng = np.random.default_rng(3)
    features = np.maximum(rng.normal(size=(3000, 96)), 0).astype(np.float32)
    labels = (features[:, :12].argmax(1) % 10).astype(np.int64)
    config = ConvexConfig(path_rows=1000)
    fits = [fit_head(features[:2500], labels[:2500], features[2500:], labels[2500:], 10, config)
            for _ in range(2)]
    assert fits[0].weights.tobytes() == fits[1].weights.tobytes()
    assert fits[0].biases.tobytes() == fits[1].biases.tobytes()
    first, second = ([dataclasses.replace(point, seconds=0.0) for point in fit.path]
                     for fit in fits)
    assert first == second


def _solver_threads_started(fit: Callable[[], object]) -> list[str]:
    """Names of the threads started during `fit()` that ran the solver's pool."""
    started: list[str] = []
    threading.setprofile(lambda *_: started.append(threading.current_thread().name))
    try:
        fit()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    return sorted({name for name in started if name.startswith("solver")})


def test_a_loss_of_one_chunk_is_summed_on_the_calling_thread(monkeypatch):
    """One chunk (here 400 rows of 20) is summed where the fit runs, with no pool thread per
    evaluation; several chunks on a multi-threaded BLAS still go to the pool, and both give the
    layer the sums' order says: the pool only decides where each share is summed."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 20)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64) + 2 * (features[:, 1] > 0)
    fits: list[solver.LayerFit] = []
    assert _solver_threads_started(lambda: fits.append(fit_layer(features, labels, 4, 1e-3))) == []
    monkeypatch.setattr(solver, "CHUNK_VALUES", 4 * 50)  # 8 chunks of 50 rows
    names = _solver_threads_started(lambda: fits.append(fit_layer(features, labels, 4, 1e-3)))
    workers = max((pool["num_threads"] for pool in solver._blas().info()), default=1)
    assert bool(names) == (workers > 1)
    np.testing.assert_allclose(fits[1].weights, fits[0].weights, atol=1e-4)


def test_a_warm_start_continues_from_a_previous_state():
    """fit_layer's `state` restarts a fit at another penalty (the path's warm start): from the
    optimum at the same penalty, L-BFGS has next to nothing left to do."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 20)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64) + 2 * (features[:, 1] > 0)
    cold = fit_layer(features, labels, 4, 1e-3)
    warm = fit_layer(features, labels, 4, 1e-3, start=cold.state)
    assert warm.iterations < max(3, cold.iterations // 4)
    np.testing.assert_allclose(warm.weights, cold.weights, atol=1e-2)


@pytest.mark.parametrize("objective", [SOFTMAX, SIGMOID])
def test_probabilities_in_chunks_equal_one_pass(objective, monkeypatch):
    """The head scores rows a chunk at a time (a million test rows of 1,000 classes never hold
    several [N, C] arrays): the same probabilities as one product, for every row or a sample."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, 8)).astype(np.float32)
    head = Head(rng.normal(size=(8, 5)).astype(np.float32),
                rng.normal(size=5).astype(np.float32), objective)
    logits = features.astype(np.float64) @ head.weights + head.biases
    if objective.multi_label:
        expected = 1 / (1 + np.exp(-logits))
    else:
        expected = np.exp(logits - logits.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
    monkeypatch.setattr(solver, "CHUNK_VALUES", 5 * 7)  # 7 rows a chunk
    np.testing.assert_allclose(head.probabilities(features), expected, atol=1e-6)
    rows = np.array([4, 4, 0, 49, 17, 3, 3, 3, 8, 1])
    np.testing.assert_allclose(head.probabilities(features, rows), expected[rows], atol=1e-6)
    whole = evaluate_head(head, FeatureSet(features, expected.argmax(1)), 5, -1, 0)
    assert whole.accuracy == 1.0 and whole.count == 50


def test_correlated_features_converge_in_fewer_steps_to_the_same_optimum(monkeypatch):
    """L-BFGS steps in coordinates shaped by the features' correlation (solver._Coordinates):
    on strongly correlated features it needs fewer iterations than on the parameters
    themselves, and reaches the same penalised loss."""
    monkeypatch.setattr(solver, "SHAPED_VALUES", 1000)  # 1,500 rows x 4 classes count as large
    rng = np.random.default_rng(5)
    base = rng.normal(size=(1500, 6))
    features = (base @ rng.normal(size=(6, 40)) + 0.05 * rng.normal(size=(1500, 40)))
    features = features.astype(np.float32)
    labels = (base[:, 0] + 0.5 * base[:, 1] > 0).astype(np.int64) + 2 * (base[:, 2] > 0)
    shaped = Standardization.of(features, correlation=True)
    plain = dataclasses.replace(shaped, correlation=None)
    fits = {name: fit_layer(features, labels, 4, 1e-4, statistics=statistics,
                            options=SolverOptions(max_iterations=1000, tolerance=1e-9))
            for name, statistics in (("shaped", shaped), ("plain", plain))}
    assert fits["shaped"].iterations < fits["plain"].iterations
    losses = {name: Problem(features, labels, 4, shaped, SolverOptions()).loss_and_gradient(
        fit.state, 1e-4)[0] for name, fit in fits.items()}
    assert losses["shaped"] == pytest.approx(losses["plain"], abs=1e-4)


@functools.lru_cache(maxsize=None)
def fashion_rows() -> tuple[np.ndarray, np.ndarray]:
    """300 real Fashion-MNIST images as float32 [300, 196] rows (14 x 14 means of 2 x 2
    pixels: the border columns are constant, degenerate features) and their labels."""
    from tests.fixtures_data import fashion_mnist_idx_dir, fashion_mnist_module

    module = fashion_mnist_module()
    images_path, labels_path = (fashion_mnist_idx_dir() / name
                                for name in module.IDX_FILES["train"])
    images = module.read_images(images_path, 300).reshape(300, 14, 2, 14, 2).mean(axis=(2, 4))
    return ((images.reshape(300, -1) / 255.0).astype(np.float32),
            module.read_labels(labels_path)[:300].astype(np.int64))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rows=st.integers(1, 120), first_column=st.integers(0, 190),
       dims=st.integers(1, 20), classes=st.integers(2, 12), chunk=st.integers(1, 40),
       sampled=st.booleans(), workers=st.integers(1, 3), kept=st.booleans())
def test_the_chunked_objective_equals_one_direct_pass(data, rows, first_column, dims, classes,
                                                      chunk, sampled, workers, kept):
    """The loss and gradient summed over chunks of rows (any chunk size, on a sample of rows
    taken chunk by chunk or gathered once, in 1-3 parallel shares) equal one float64 pass over
    the rows written from the definition, on real vectors with constant columns."""
    features = fashion_rows()[0][:rows, first_column:first_column + dims]
    targets = fashion_rows()[1][:rows] % classes
    chosen = None
    if sampled:
        chosen = np.sort(data.draw(st.lists(st.integers(0, rows - 1), min_size=1,
                                            max_size=rows, unique=True), label="rows"))
    statistics = Standardization.of(features)
    params = np.random.default_rng(rows).normal(scale=0.3, size=(features.shape[1] + 1) * classes)
    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(workers) as pool:
        patch.setattr(solver, "CHUNK_VALUES", classes * chunk)
        patch.setattr(solver, "KEEP_CLASSES", 64 if kept else 0)
        problem = Problem(features, targets, classes, statistics, SolverOptions(), chosen)
        assert problem.step == chunk
        loss, gradient = problem.loss_and_gradient(params, 1e-2, pool, workers)
    picked = slice(None) if chosen is None else chosen

    def direct(vector: np.ndarray) -> float:
        weights, biases = statistics.layer(vector)
        standard = vector[:features.shape[1] * classes]
        return (reference_loss(SOFTMAX, targets[picked], features[picked].astype(np.float64)
                               @ weights + biases, 0.0) + 1e-2 * float(standard @ standard))

    assert loss == pytest.approx(direct(params), rel=1e-5, abs=1e-6)
    direction = np.random.default_rng(classes).normal(size=params.shape)
    numeric = (direct(params + 1e-3 * direction) - direct(params - 1e-3 * direction)) / 2e-3
    assert gradient @ direction == pytest.approx(numeric, rel=2e-3, abs=2e-4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first_column=st.integers(0, 190), dims=st.integers(1, 12), classes=st.integers(1, 9),
       l2=st.sampled_from([0.0, 1e-4, 1e-2]), seed=st.integers(0, 2**16))
def test_the_shaped_coordinates_are_the_cholesky_change_of_variables(first_column, dims,
                                                                    classes, l2, seed):
    """L-BFGS's coordinates (in-place BLAS triangular products): W = L^-T Q, Q = L^T W and the
    gradient L^-1 g, biases untouched, L the Cholesky factor of the correlation of real vectors
    (with constant columns) + the ridge; the caller's vectors are not changed."""
    from scipy.linalg import cholesky, solve_triangular

    features = fashion_rows()[0][:, first_column:first_column + dims]
    dims = features.shape[1]
    statistics = Standardization.of(features, correlation=True)
    coordinates = solver._Coordinates(statistics, (dims + 1) * classes, l2, 2**30)
    ridge = max(solver.RIDGE * classes * l2, 1e-6)
    factor = cholesky(statistics.correlation + ridge * np.eye(dims), lower=True)
    vector = np.random.default_rng(seed).normal(size=(dims + 1) * classes)
    before = vector.copy()
    weights = vector[:dims * classes].reshape(dims, classes)
    for name, expected in (("params", solve_triangular(factor, weights, lower=True, trans="T")),
                           ("free", factor.T @ weights),
                           ("gradient", solve_triangular(factor, weights, lower=True))):
        moved = getattr(coordinates, name)(vector)
        np.testing.assert_allclose(moved[:dims * classes].reshape(dims, classes), expected,
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(moved[dims * classes:], vector[dims * classes:])
    np.testing.assert_array_equal(vector, before)
    np.testing.assert_allclose(coordinates.free(coordinates.params(vector)), vector, atol=1e-8)
