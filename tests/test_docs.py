"""The user documentation stays true: the flag reference is generated from the commands."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click
import click.testing

from retrainer.cli.retrain import main as retrain

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_flag_reference_is_generated_from_the_commands():
    spec = importlib.util.spec_from_file_location(
        "write_flag_reference", REPO_ROOT / "scripts" / "write_flag_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sections = module.retrain_sections(retrain)
    assert module.OTHER not in sections, (
        f"place {[param.name for param in sections[module.OTHER]]} in a section of "
        "scripts/write_flag_reference.py")
    assert (REPO_ROOT / "docs" / "flags.md").read_text(encoding="utf-8") == module.reference(), (
        "docs/flags.md is stale: run .venv/bin/python scripts/write_flag_reference.py")


def test_the_version_is_defined_once():
    import retrainer

    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'version = {attr = "retrainer.__version__"}' in pyproject
    outcome = click.testing.CliRunner().invoke(retrain, ["--version"])
    assert outcome.exit_code == 0 and outcome.output == f"retrain, version {retrainer.__version__}\n"
