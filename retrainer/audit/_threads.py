"""Audit helper: the detectors' large loops on every CPU, their results in order.

numpy and BLAS release the GIL for the matrix products, comparisons and gathers that dominate a
large audit, so plain threads use every core; the audit runs them with one BLAS thread each
(`neighbours.one_blas_thread`), which keeps small problems from spinning idle BLAS threads.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from retrainer.io.host import usable_cpus

PARALLEL_ROWS = 10_000  # images from which per-class work runs on every CPU (smaller
# pieces would mostly wait on the GIL)

Item = TypeVar("Item")
Result = TypeVar("Result")


def in_order(function: Callable[[Item], Result], items: Iterable[Item],
             threads: bool = True) -> Iterator[Result]:
    """`function(item)` for each item, yielded in the items' order, computed on up to one
    thread per usable CPU, each at most one item ahead of the caller (so results that the
    caller's work makes smaller, e.g. a rising cut-off, are not all computed up front).

    With one item, one CPU or `threads` False it runs in the caller's thread, as `map` would.
    """
    items = list(items)
    workers = min(usable_cpus(), len(items)) if threads else 1
    if workers <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="audit") as pool:
        pending: deque[Future[Result]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
