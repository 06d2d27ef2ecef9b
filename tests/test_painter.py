"""The report pictures' helper process (reports/painter.py): the same PNG bytes as drawn here,
draw_pictures' errors raised to the run, and the run's own thread whenever the helper is not
ready, absent or dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from retrainer.reports.options import ReportOptions
from retrainer.reports.painter import Painter
from retrainer.reports.writer import draw_pictures
from retrainer.training.head_types import EvalPoint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the helper process runs on Linux only")


def drawing_process() -> int:
    """Run by name in the helper (or here): which process drew."""
    return os.getpid()


def fails(message: str) -> None:
    raise ValueError(message)


def dies_in_the_helper(parent: int) -> str:
    if os.getpid() != parent:
        os._exit(3)
    return "drawn here"


def _picture_arguments(tmp_path):
    options = ReportOptions(tmp_path / "m.json", tmp_path / "r.html", tmp_path / "logs",
                            None, None, 0)
    history = [EvalPoint(10, 0.8, 0.5, 0.7, 20, 0.6), EvalPoint(20, 0.9, 0.3, 0.75, 20, 0.55)]
    split = types.SimpleNamespace(count=20, confusion_matrix=np.array([[9, 1], [2, 8]]))
    return options, ("a", "b"), history, "lbfgs", "testing", split, None


def test_the_helper_draws_the_same_png_bytes_as_this_process(tmp_path):
    arguments = _picture_arguments(tmp_path)
    with Painter() as painter:
        assert painter.ready(timeout=None)
        pictures = painter.draw(draw_pictures, *arguments)()
    assert pictures == draw_pictures(*arguments)
    assert pictures.training_curves.startswith(b"\x89PNG")


def test_a_ready_helper_draws_and_an_absent_one_leaves_it_to_this_process():
    with Painter() as painter:
        assert painter.ready(timeout=None)
        assert painter.draw(drawing_process)() != os.getpid()
    with Painter(start=False) as painter:
        assert not painter.ready(timeout=None)
        assert painter.draw(drawing_process)() == os.getpid()


def test_draw_pictures_errors_reach_the_run():
    with Painter() as painter:
        assert painter.ready(timeout=None)
        waiting = painter.draw(fails, "no picture")
        with pytest.raises(ValueError, match="no picture"):
            waiting()


def test_a_helper_that_dies_leaves_the_pictures_to_this_process():
    with Painter() as painter:
        assert painter.ready(timeout=None)
        assert painter.draw(dies_in_the_helper, os.getpid())() == "drawn here"


def test_an_unused_helper_is_stopped():
    painter = Painter()
    process = painter._process
    assert process is not None
    painter.close()
    assert process.poll() is not None


def test_a_ctrl_c_at_the_terminal_reaches_the_run_not_the_helper():
    """The terminal sends SIGINT to its foreground process group: the helper is outside it (its
    own session), so it never prints a KeyboardInterrupt traceback; the run stops it."""
    with Painter() as painter:
        process = painter._process
        assert process is not None
        assert os.getsid(process.pid) == process.pid != os.getsid(0)
        assert os.getpgid(process.pid) != os.getpgid(0)



def running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie has ended: its parent is gone, and init may
    reap it late)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_helper_ends_when_the_run_does():
    """A run killed outright never closes its painter: the helper ends at its stdin's end."""
    started = subprocess.run(
        [sys.executable, "-c", "import os; from retrainer.reports.painter import Painter; "
                               "painter = Painter(); print(painter._process.pid, flush=True); "
                               "painter.ready(timeout=None); os._exit(0)"],
        capture_output=True, text=True, timeout=120, check=True)
    helper = int(started.stdout.split()[0])
    deadline = time.monotonic() + 60
    while running(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(helper)
