"""L-BFGS for the layer's solver (training/solver.py): unconstrained minimisation of a smooth
function from its value and gradient, in numpy.

Each direction is the two-loop recursion over the last HISTORY steps and gradient changes
(Nocedal & Wright, Numerical Optimization, 2nd ed., algorithm 7.4; initial Hessian s'y / y'y of
the newest pair), and each step a line search that meets the strong Wolfe conditions (algorithms
3.5 and 3.6, cubic interpolation safeguarded by bisection). It stops as scipy's L-BFGS-B does
(which it replaces: importing scipy.optimize cost about 0.1 s of every cold run, and its
workspace held ~25 float64 copies of the parameters): when the largest gradient entry is at most
`gradient_tolerance`, when an iteration lowers the value by at most `tolerance` x max(|f|, 1),
or after `max_iterations`. The history is float32 (half the memory: 100 MB at 1.28M
parameters); the iterate, gradients and every dot product's sum are float64.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Callable, Optional

import numpy as np

HISTORY = 10  # steps the direction remembers (scipy's default `maxcor`)
SUFFICIENT_DECREASE = 1e-4  # Wolfe's c1
CURVATURE = 0.9  # Wolfe's c2 (scipy's L-BFGS-B: the same)
LINE_EVALUATIONS = 20  # evaluations one line search may take (scipy: 20)
GROWTH = 4.0  # how much a step that is still descending grows before the next trial
_SAFEGUARD = 0.1  # interpolated trials keep this share of the bracket from either end

Function = Callable[[np.ndarray], tuple[float, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Minimum:
    """Where L-BFGS stopped.

    Attributes:
        x: float64 [n] the last iterate.
        value: the function there.
        iterations: steps taken (line searches that succeeded).
        evaluations: calls of the function.
        converged: stopped by a tolerance (not by `max_iterations` or a failed line search).
    """

    x: np.ndarray
    value: float
    iterations: int
    evaluations: int
    converged: bool


@dataclasses.dataclass
class _Point:
    """One trial of a line search: the step, the function and its slope along the direction."""

    step: float
    value: float
    slope: float
    gradient: np.ndarray


def minimize(function: Function, start: np.ndarray, max_iterations: int, tolerance: float,
             gradient_tolerance: float = 1e-9) -> Minimum:
    """Minimise `function` (x -> (float value, float64 [n] gradient)) from `start` (float [n]).

    Returns:
        Minimum; `x` is `start` (as float64) when it already met `gradient_tolerance`.
    """
    x = np.array(start, np.float64)
    value, gradient = function(x)
    evaluations, iterations = 1, 0
    memory: collections.deque[tuple[np.ndarray, np.ndarray, float]] = collections.deque(
        maxlen=HISTORY)
    scaling = 1.0  # s'y / y'y of the newest pair
    while math.isfinite(value):
        if not len(gradient) or float(np.abs(gradient).max()) <= gradient_tolerance:
            return Minimum(x, value, iterations, evaluations, True)
        if iterations >= max_iterations:
            break
        direction = _direction(gradient, memory, scaling)
        slope = float(gradient @ direction)
        if not (slope < 0 and math.isfinite(slope)):  # not a descent direction: forget
            memory.clear()
            direction, slope = -gradient, -float(gradient @ gradient)
        # A first step (or one after forgetting) moves the parameters by a length of 1.
        first = 1.0 if memory else 1.0 / math.sqrt(-slope)
        found, used = _line_search(function, x, _Point(0.0, value, slope, gradient), direction,
                                   first)
        evaluations += used
        if found is None:
            if memory:  # retry along the steepest descent
                memory.clear()
                continue
            break
        step = found.step * direction
        change = found.gradient - gradient
        curvature = float(step @ change)
        if curvature > np.finfo(np.float64).eps * float(change @ change):
            memory.append((step.astype(np.float32), change.astype(np.float32), 1.0 / curvature))
            scaling = curvature / float(change @ change)
        decrease = value - found.value
        reference = max(abs(value), abs(found.value), 1.0)
        x = x + step
        value, gradient = found.value, found.gradient
        iterations += 1
        if decrease <= tolerance * reference:
            return Minimum(x, value, iterations, evaluations, True)
    return Minimum(x, value, iterations, evaluations, False)


def _direction(gradient: np.ndarray,
               memory: collections.deque[tuple[np.ndarray, np.ndarray, float]],
               scaling: float) -> np.ndarray:
    """-H g by the two-loop recursion (float64 [n]); -g without a history."""
    direction = -gradient
    if not memory:
        return direction
    direction = direction.copy()
    weights = []
    for step, change, rho in reversed(memory):
        weight = rho * float(step @ direction)
        direction -= np.float64(weight) * change
        weights.append(weight)
    direction *= scaling
    for (step, change, rho), weight in zip(memory, reversed(weights)):
        direction += np.float64(weight - rho * float(change @ direction)) * step
    return direction


def _line_search(function: Function, x: np.ndarray, origin: _Point, direction: np.ndarray,
                 step: float) -> tuple[Optional[_Point], int]:
    """A step along `direction` meeting the strong Wolfe conditions, first trying `step`:
    (that point, evaluations), or (a point that only lowers the function enough, evaluations)
    when the evaluations run out, or (None, evaluations) when none does."""
    previous = origin
    for used in range(1, LINE_EVALUATIONS + 1):
        trial = _evaluate(function, x, direction, step)
        if not _sufficient(trial, origin) or (used > 1 and trial.value >= previous.value):
            return _zoom(function, x, origin, direction, previous, trial, used)
        if abs(trial.slope) <= -CURVATURE * origin.slope:
            return trial, used
        if trial.slope >= 0:
            return _zoom(function, x, origin, direction, trial, previous, used)
        previous, step = trial, step * GROWTH
    return (previous if previous.step > 0 else None), LINE_EVALUATIONS


def _zoom(function: Function, x: np.ndarray, origin: _Point, direction: np.ndarray,
          low: _Point, high: _Point, used: int) -> tuple[Optional[_Point], int]:
    """Algorithm 3.6: `low` meets the sufficient decrease and is the lower end; the bracket
    [low, high] (in either order) holds a Wolfe point."""
    while used < LINE_EVALUATIONS:
        width = high.step - low.step
        if abs(width) <= 1e-12 * max(abs(low.step), abs(high.step)):
            break
        trial = _evaluate(function, x, direction, _interpolated(low, high))
        used += 1
        if not _sufficient(trial, origin) or trial.value >= low.value:
            high = trial
            continue
        if abs(trial.slope) <= -CURVATURE * origin.slope:
            return trial, used
        if trial.slope * (high.step - low.step) >= 0:
            high = low
        low = trial
    return (low if low.step > 0 else None), used


def _interpolated(low: _Point, high: _Point) -> float:
    """The minimiser of the cubic through both ends' values and slopes, kept at least
    _SAFEGUARD of the bracket away from its ends; the midpoint when the cubic has none there
    (or an end is not finite)."""
    left, right = sorted((low.step, high.step))
    middle = 0.5 * (low.step + high.step)
    if not (math.isfinite(high.value) and math.isfinite(high.slope)):
        return middle
    span = high.step - low.step
    d1 = low.slope + high.slope - 3.0 * (low.value - high.value) / (low.step - high.step)
    square = d1 * d1 - low.slope * high.slope
    if square < 0:
        return middle
    d2 = math.copysign(math.sqrt(square), span)
    denominator = high.slope - low.slope + 2.0 * d2
    if denominator == 0:
        return middle
    step = high.step - span * (high.slope + d2 - d1) / denominator
    margin = _SAFEGUARD * (right - left)
    if not (math.isfinite(step) and left + margin <= step <= right - margin):
        return middle
    return step


def _evaluate(function: Function, x: np.ndarray, direction: np.ndarray, step: float) -> _Point:
    value, gradient = function(x + step * direction)
    slope = float(gradient @ direction)
    if not (math.isfinite(value) and math.isfinite(slope)):  # an overflow: a step too long
        value, slope = math.inf, math.inf
    return _Point(step, value, slope, gradient)


def _sufficient(trial: _Point, origin: _Point) -> bool:
    """Armijo: the function fell by at least c1 x the step x the initial slope."""
    return trial.value <= origin.value + SUFFICIENT_DECREASE * trial.step * origin.slope
