"""README.md runs: every code block, top to bottom, in a fresh folder, on real images.

Shell blocks run in bash (one number changed: the tour's image folder holds 20 images per class
instead of 100, to keep CI short), Python blocks run in one namespace as in a notebook, the CI
YAML's `run:` command runs as written, and the TF Serving request is built by the README's own
shell line and fed to the SavedModel's `serving_bytes` signature (Docker itself is not available
to the tests). Blocks that cannot run here say what covers them instead; a block of a kind this
test does not know fails it, so a new README command cannot go unchecked.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.fixtures_data import REPO_ROOT, fashion_mnist_idx_dir, fashion_mnist_module

README = REPO_ROOT / "README.md"
SHORTER = {"--per-class 100": "--per-class 20"}  # the only change made to a README command
# Blocks run elsewhere: (a pattern of the block, what runs it)
COVERED_ELSEWHERE = {
    r"^bash examples/fashion_mnist_demo\.sh": "tests/test_demo.py runs the demo",
    r"^bash scripts/test\.sh": ".ci/run runs it",
}


def blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in README order."""
    return re.findall(r"```(\w*)\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A fresh folder with what a reader has: the repo's examples and Fashion-MNIST files, a photo
    and a folder of photos to classify, and the installed commands on PATH."""
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "fashion-mnist").symlink_to(fashion_mnist_idx_dir())
    holdout = fashion_mnist_module().write_image_folder(
        fashion_mnist_idx_dir(), tmp_path / "holdout_source", per_class=1, subset="t10k")
    pictures = sorted(holdout.glob("*/*.png"))
    Image.open(pictures[0]).convert("RGB").resize((300, 300)).save(tmp_path / "photo.jpg")
    (tmp_path / "more_photos").mkdir()
    for path in pictures[1:4]:
        (tmp_path / "more_photos" / path.name).write_bytes(path.read_bytes())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def run_shell(code: str, cwd: Path) -> subprocess.CompletedProcess:
    for long, short in SHORTER.items():
        code = code.replace(long, short)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def check_install(code: str) -> None:
    """`pip install '.[extra]'` names extras pyproject.toml defines (CI installs them)."""
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for extra in re.findall(r"'\.\[([\w-]+)\]'", code):
        assert re.search(rf"^{re.escape(extra)} = \[", pyproject, re.M), extra


def check_serving(code: str, cwd: Path) -> None:
    """The `docker run` serves the SavedModel the README exported; the `curl` line's body, built
    by bash exactly as written, is a request `serving_bytes` answers."""
    import tensorflow as tf

    docker, curl = code.split("\ncurl", 1)
    mount = re.search(r'-v "\$PWD/([^:]+):/models/(\w+)/1"', docker)
    assert mount and (cwd / mount.group(1) / "saved_model.pb").is_file()
    assert f"/v1/models/{mount.group(2)}:predict" in curl
    body = run_shell("printf '%s' " + curl.split(" -d ", 1)[1], cwd)
    assert body.returncode == 0, body.stderr
    request = json.loads(body.stdout)
    model = tf.saved_model.load(str(cwd / mount.group(1)))
    signature = model.signatures[request["signature_name"]]
    files = [base64.b64decode(instance["b64"]) for instance in request["instances"]]
    answer = signature(image_bytes=tf.constant(files))
    labels = (cwd / "retrain_output" / "output_labels.txt").read_text().split("\n")
    assert answer["label"].numpy()[0].decode() in labels


def run_ci(code: str, cwd: Path) -> None:
    """The workflow's retrain step, as written, on the tour's images; the cache step caches the
    folder that step fills."""
    command = re.search(r"run: (retrain .*?)\n\s*- name", code, re.S).group(1)
    command = " ".join(command.split())
    (cwd / "data").symlink_to(cwd / "photos")
    outcome = run_shell(command, cwd)
    assert outcome.returncode in (0, 6), outcome.stderr[-3000:]  # 6: the gate failed, as designed
    cached = re.search(r"path: (\S+)", code).group(1)
    assert f"--bottleneck_dir {cached}" in command and any((cwd / cached).rglob("*.npy"))


@pytest.mark.slow
def test_the_readme_runs_top_to_bottom(sandbox):
    namespace: dict = {}
    ran = []
    for index, (language, code) in enumerate(blocks()):
        where = f"README block {index} ({language})"
        first = code.lstrip().splitlines()[0] if code.strip() else ""
        if language in ("text", "console") or (language == "" and "/" in first):
            ran.append("output sample")
            continue
        if language == "kotlin":  # Android: the metadata it reads is tested in test_tflite_export
            ran.append("android snippet (not executable here)")
            continue
        if language == "yaml":
            run_ci(code, sandbox)
            ran.append("ci")
            continue
        if language == "python":
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                exec(compile(code, where, "exec"), namespace)  # the README's own code
            assert output.getvalue().strip(), where
            ran.append("python")
            continue
        assert language == "bash", f"{where}: a kind of block this test does not run"
        if first.startswith("pip install"):
            check_install(code)
            ran.append("install")
        elif any(re.match(pattern, first) for pattern in COVERED_ELSEWHERE):
            ran.append("covered elsewhere")
        elif first.startswith("docker run"):
            check_serving(code, sandbox)
            ran.append("serving")
        elif first.startswith("retrain-extract"):
            if importlib_missing("apache_beam"):
                ran.append("beam (not installed: skipped)")
                continue
            outcome = run_shell(code, sandbox)
            assert outcome.returncode == 0, f"{where}: {outcome.stderr[-3000:]}"
            assert "0 computed" in outcome.stdout.split("Bottleneck vectors:")[-1], outcome.stdout
            ran.append("shell")
        else:
            outcome = run_shell(code, sandbox)
            assert outcome.returncode == 0, f"{where}: {outcome.stderr[-3000:]}"
            ran.append("shell")
    assert ran.count("python") >= 4 and "serving" in ran and "ci" in ran, ran


def importlib_missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def test_the_shell_completion_line_works():
    line = re.search(r'`eval "\$\((_RETRAIN_COMPLETE=bash_source retrain)\)"`',
                     README.read_text(encoding="utf-8"))
    assert line, "README's completion line changed: update this test"
    script = subprocess.run(["bash", "-c", line.group(1)], capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                                                       f"{os.environ['PATH']}"}, timeout=60)
    assert "complete " in script.stdout and "_retrain_completion" in script.stdout, script.stderr
    words = subprocess.run(["retrain"], capture_output=True, text=True, timeout=60, env={
        **os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "COMP_WORDS": "retrain --split_c", "COMP_CWORD": "1",
        "_RETRAIN_COMPLETE": "bash_complete"})
    assert "plain,--split_compat" in words.stdout.splitlines()


@pytest.mark.slow
def test_the_python_walk_through_runs_as_a_notebook(sandbox):
    """docs/python.md's cells, in order, in one namespace, on a folder of real images."""
    run = run_shell("python examples/fashion_mnist.py --idx-dir .cache/fashion-mnist "
                    "--out photos --per-class 20", sandbox)
    assert run.returncode == 0, run.stderr
    page = (REPO_ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    cells = re.findall(r"```python\n(.*?)```", page, re.S)
    namespace: dict = {}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        for index, code in enumerate(cells):
            exec(compile(code, f"docs/python.md cell {index}", "exec"), namespace)
    printed = output.getvalue()
    assert "test accuracy" in printed and "<retrainer.Model" in printed, printed
    assert (sandbox / "curves.png").stat().st_size > 0
    assert (sandbox / "export" / "model.tflite").is_file()
