"""The user documentation stays true: README length, the generated flag reference, every flag the
README and docs/ name, links between pages, and no development history in user docs."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import click
import click.testing
import pytest

from retrainer.cli.extract import main as extract
from retrainer.cli.imagenet import main as imagenet
from retrainer.cli.label_image import main as label_image
from retrainer.cli.retrain import main as retrain

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
USER_DOCS = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_000

COMMANDS = {"retrain": retrain, "label-image": label_image, "retrain-extract": extract,
            "python -m retrainer.cli.imagenet": imagenet}
# Flags of other programs that the docs name, each with the program: anything else that looks
# like a flag must be one of our commands'.
OTHER_PROGRAMS = {
    # Apache Beam pipeline options and runners' (retrain-extract passes them on; docs/beam.md)
    "--runner": "beam", "--direct_num_workers": "beam", "--direct_running_mode": "beam",
    "--project": "beam", "--region": "beam", "--temp_location": "beam",
    "--staging_location": "beam", "--sdk_container_image": "beam", "--job_endpoint": "beam",
    "--environment_type": "beam", "--flink_master": "beam", "--spark_master_url": "beam",
    "--dask_client_address": "beam", "--experiments": "beam", "--machine_type": "beam",
    "--worker_machine_type": "beam", "--max_num_workers": "beam", "--num_workers": "beam",
    "--save_main_session": "beam", "--requirements_file": "beam", "--setup_file": "beam",
    "--dataflow_service_options": "beam", "--worker_accelerator": "beam",
    "--environment_config": "beam", "--dask_gather": "beam",
    "--dask_npartitions": "beam", "--dask_partition_size": "beam",
    "--dask_connection_timeout": "beam", "--dask_scheduler_file": "beam",
    "--dask_client_name": "beam",
    # TensorFlow's label_image.py (same names as label-image's, plus its own)
    "--image": "label_image.py",
    # docker, curl, pip, pytest, tensorboard, saved_model_cli, git, base64, jq, apt, tar
    "--rm": "docker", "--gpus": "docker", "--mount": "docker", "--name": "docker",
    "--port": "dask scheduler", "--nworkers": "dask worker", "--nthreads": "dask worker",
    "--scheduler-file": "dask scheduler/worker", "--create-dirs": "curl",
    "--data": "curl", "--data-binary": "curl", "--fail": "curl",
    "--upgrade": "pip", "--quiet": "pip", "--extra-index-url": "pip",
    "--hypothesis-seed": "pytest", "--durations": "pytest", "--dist": "pytest",
    "--logdir": "tensorboard", "--dir": "saved_model_cli", "--tag_set": "saved_model_cli",
    "--signature_def": "saved_model_cli", "--all": "saved_model_cli",
    "--input_exprs": "saved_model_cli", "--outdir": "saved_model_cli",
    "--help": "any", "--version": "any",
}
_SCRIPT_SOURCES = ("benchmarks/*.py", "scripts/*.py", "examples/*.py")


def _script_flags() -> set[str]:
    """The flags our benchmarks and scripts define (argparse / click), read from their source."""
    return {flag for pattern in _SCRIPT_SOURCES for path in REPO_ROOT.glob(pattern)
            for flag in re.findall(r"""["'](--[a-z][a-z0-9_-]*)["']""",
                                   path.read_text(encoding="utf-8"))}


_FLAG = re.compile(r"(?<![\w/.-])--[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*")


def _options(command: click.Command) -> set[str]:
    """Every spelling the command accepts, hidden ones included (make_image_classifier's)."""
    return {name for param in command.params if isinstance(param, click.Option)
            for name in (*param.opts, *param.secondary_opts)} | {"--help"}


def _command_lines(text: str) -> list[tuple[str, str]]:
    """(command, its whole line with continuations joined) for each of our commands in the
    fenced code blocks of `text`."""
    found = []
    for block in re.findall(r"```(?:bash|console|sh|yaml)?\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"^\s*(\$|-?\s*run:|#)\s*", "", line).replace(".venv/bin/", "")
            for name in sorted(COMMANDS, key=len, reverse=True):
                if line.startswith(name + " ") or line == name:
                    found.append((name, line))
                    break
    return found


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8")) <= README_LIMIT


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


@pytest.mark.parametrize("page", USER_DOCS, ids=lambda page: page.name)
def test_every_flag_named_exists(page):
    text = page.read_text(encoding="utf-8")
    ours = set().union(*map(_options, COMMANDS.values())) | _script_flags()
    unknown = sorted({flag for flag in _FLAG.findall(text)
                      if flag not in ours and flag not in OTHER_PROGRAMS})
    assert unknown == [], f"{page.name} names flags no command has: {unknown}"
    wrong = []
    for name, line in _command_lines(text):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        accepted = _options(COMMANDS[name])
        wrong += [f"{name}: {word.split('=')[0]}" for word in words
                  if word.startswith("--") and word.split("=")[0] not in accepted
                  and word.split("=")[0] not in OTHER_PROGRAMS]
    assert wrong == [], f"{page.name}: flags its commands do not take: {wrong}"


@pytest.mark.parametrize("page", USER_DOCS, ids=lambda page: page.name)
def test_links_between_pages_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path) if path else page
        if not resolved.exists():
            broken.append(target)
            continue
        if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert broken == [], f"{page.name} links to what does not exist: {broken}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower-case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#+\s+(.*)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


HISTORY = [
    (r"\bissue\s*#?\d+", "an issue number"),
    (r"(?<![\w/.-])#\d{1,5}\b", "an issue number"),
    (r"\b(this|that|a later|the latest|an earlier|a third|a fourth|the previous) session\b",
     "a session narrative"),
    (r"\b(measured|ran|run|tested|runs) on this (machine|VM)\b|\bthis project's machine\b"
     r"|\(this machine\b|\bon the development machine\b", "a this-machine narrative"),
    (r"\b[Nn]ot (done|built here|run here)\b", "development status"),
    (r"\bRun here\b|\bmeasured here\b", "a here narrative"),
    (r"\bbefore this (release|change)\b", "development history"),
]


@pytest.mark.parametrize("page", USER_DOCS, ids=lambda page: page.name)
def test_user_docs_carry_no_development_history(page):
    text = page.read_text(encoding="utf-8")
    found = [f"{what}: {match.group(0)!r}" for pattern, what in HISTORY
             for match in re.finditer(pattern, text, re.I)]
    assert found == [], f"{page.name}: move history to CHANGELOG.md: {found}"


def test_the_checks_find_what_they_look_for(tmp_path):
    """The checks above are not vacuous: each flags a planted mistake."""
    assert _FLAG.findall("use `--no_such_flag` and --image_dir, not a-b--c") == [
        "--no_such_flag", "--image_dir"]
    assert _command_lines("```bash\nretrain --image_dir x \\\n  --bogus 1\n```\n") == [
        ("retrain", "retrain --image_dir x  --bogus 1")]
    assert any(re.search(pattern, "as issue #13 says", re.I) for pattern, _ in HISTORY)
    assert not any(re.search(pattern, "see tensorflow/hub#154", re.I) for pattern, _ in HISTORY)
    (tmp_path / "a.md").write_text("# Two words\n")
    assert _anchors(tmp_path / "a.md") == {"two-words"}


def test_the_version_is_defined_once():
    import retrainer

    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'version = {attr = "retrainer.__version__"}' in pyproject
    outcome = click.testing.CliRunner().invoke(retrain, ["--version"])
    assert outcome.exit_code == 0 and outcome.output == f"retrain, version {retrainer.__version__}\n"
