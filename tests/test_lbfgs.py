"""The layer solver's own L-BFGS (training/_lbfgs.py): scipy's optimum on small problems, sound
steps on hard and degenerate ones, and no scipy.optimize on the run's path."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize as scipy_minimize

from retrainer.training import _lbfgs
from retrainer.training._lbfgs import minimize
from retrainer.training.objectives import SOFTMAX
from retrainer.training.solver import Problem, SolverOptions, Standardization, fit_layer


def test_the_solver_and_the_audit_import_no_scipy_optimize():
    code = ("import sys\nimport retrainer.training.convex, retrainer.audit.label_issues\n"
            "print(sorted(m for m in sys.modules if m.startswith('scipy.optimize')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def rosenbrock(x: np.ndarray) -> tuple[float, np.ndarray]:
    value = float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))
    gradient = np.zeros_like(x)
    gradient[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    gradient[1:] += 200 * (x[1:] - x[:-1] ** 2)
    return value, gradient


@pytest.mark.parametrize("dims", [2, 5, 30])
def test_rosenbrock_is_solved(dims):
    """A curved valley (not convex): every line search keeps the steps sound to the minimum."""
    found = minimize(rosenbrock, np.full(dims, -1.2), 2000, 0.0, 1e-8)
    assert found.converged
    np.testing.assert_allclose(found.x, np.ones(dims), atol=1e-5)


def layer_problem(data, rows, dims, classes):
    """Softmax regression on drawn rows, some of them degenerate: constant or repeated columns,
    one class present, separable labels."""
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, dims)).astype(np.float32) * rng.uniform(0.01, 5, dims)
    kind = data.draw(st.sampled_from(["noisy", "constant", "repeated", "one class",
                                      "separable"]), label="kind")
    labels = rng.integers(0, classes, rows).astype(np.int64)
    if kind == "constant":
        features[:, data.draw(st.integers(0, dims - 1), label="column")] = 3.0
    elif kind == "repeated":
        features[:] = features[:1]
    elif kind == "one class":
        labels[:] = data.draw(st.integers(0, classes - 1), label="class")
    elif kind == "separable":
        labels = (features[:, 0] > np.median(features[:, 0])).astype(np.int64) % classes
    return features, labels


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rows=st.integers(1, 60), dims=st.integers(1, 8),
       classes=st.integers(2, 5), l2=st.sampled_from([1e-4, 1e-2, 1.0]))
def test_penalised_layers_reach_scipys_minimum(data, rows, dims, classes, l2):
    """With a penalty on the weights and every class present (the biases are not penalised) the
    loss has one minimum: the same as scipy's L-BFGS-B's (both run to a tight tolerance, from
    the same zeros; the loss is summed from float32 products, so "the same" is to 1e-5). With
    a class absent it has none (that class's bias falls forever): a finite fit, lower than its
    start."""
    features, labels = layer_problem(data, rows, dims, classes)
    problem = Problem(features, labels, classes, Standardization.of(features), SolverOptions())

    def function(x: np.ndarray) -> tuple[float, np.ndarray]:
        return problem.loss_and_gradient(x, l2)

    start = np.zeros((dims + 1) * classes)
    ours = minimize(function, start, 500, 1e-12, 1e-7)
    theirs = scipy_minimize(function, start, jac=True, method="L-BFGS-B",
                            options={"maxiter": 500, "ftol": 1e-12, "gtol": 1e-7})
    assert math.isfinite(ours.value) and np.isfinite(ours.x).all()
    assert ours.value <= function(start)[0]
    if len(np.unique(labels)) == classes:
        assert ours.value == pytest.approx(theirs.fun, rel=1e-5, abs=1e-7)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rows=st.integers(1, 40), dims=st.integers(1, 6),
       classes=st.integers(2, 4), max_iterations=st.integers(0, 60))
def test_unpenalised_fits_stay_finite_and_never_climb(data, rows, dims, classes,
                                                      max_iterations):
    """Without a penalty a separable or one-class split has no minimum (the weights would grow
    forever): the fit stops within its iterations with finite weights, never above its start."""
    features, labels = layer_problem(data, rows, dims, classes)
    fit = fit_layer(features, labels, classes, 0.0,
                    options=SolverOptions(max_iterations=max_iterations))
    assert fit.iterations <= max_iterations
    assert np.isfinite(fit.weights).all() and np.isfinite(fit.biases).all()
    statistics = Standardization.of(features)
    problem = Problem(features, labels, classes, statistics, SolverOptions(SOFTMAX))
    assert (problem.loss_and_gradient(fit.state, 0.0)[0]
            <= problem.loss_and_gradient(np.zeros_like(fit.state), 0.0)[0] + 1e-12)


def test_a_start_at_the_minimum_takes_no_step():
    found = minimize(lambda x: (float(x @ x), 2 * x), np.zeros(4), 100, 1e-5)
    assert found.converged and found.iterations == 0 and found.evaluations == 1


def test_steps_into_overflow_are_shortened():
    """A function that is infinite beyond |x| = 1 (a barrier): the line search backs off
    instead of stepping there, and reaches the minimum inside."""

    def barrier(x: np.ndarray) -> tuple[float, np.ndarray]:
        inside = 1 - x @ x
        if inside <= 0:
            return math.inf, np.full_like(x, math.nan)
        return float(-math.log(inside) + (x - 0.5) @ np.ones_like(x)), (
            2 * x / inside + np.ones_like(x))

    found = minimize(barrier, np.zeros(3), 200, 0.0, 1e-9)
    assert found.converged and float(found.x @ found.x) < 1
    np.testing.assert_allclose(barrier(found.x)[1], 0, atol=1e-8)


def test_the_history_is_float32_and_bounded(monkeypatch):
    """At most HISTORY pairs are kept, each as float32 vectors (half scipy's memory)."""
    kept: list[int] = []
    original = _lbfgs._direction

    def spying(gradient, memory, scaling):
        kept.append(len(memory))
        assert all(step.dtype == change.dtype == np.float32 for step, change, _ in memory)
        return original(gradient, memory, scaling)

    monkeypatch.setattr(_lbfgs, "_direction", spying)
    minimize(rosenbrock, np.full(20, -1.2), 60, 0.0, 1e-12)
    assert max(kept) == _lbfgs.HISTORY
