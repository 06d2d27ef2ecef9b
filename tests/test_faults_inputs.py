"""Bad inputs through the real CLIs: each is skipped with a warning naming it, or stops the run with
one "Error: ..." line and its documented exit code -- never a traceback, never a lost run.

Cases and outcomes are listed in docs/faults.md. `retrain` runs in-process with the fast
`tiny_test` extractor; real processes are in tests/test_faults_process.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from retrainer.cache.entries import BottleneckCache
from retrainer.cli.label_image import main as label_image_main
from retrainer.cli.retrain import main as retrain_main
from retrainer.data.batches import file_digest
from retrainer.errors import EXIT_DATA, EXIT_MODEL, EXIT_OK, EXIT_UNREADABLE_IMAGES, EXIT_USAGE
from tests.fixtures_data import make_color_image_dir, make_messy_image_dir
from tests.fixtures_extractors import TinyExtractor
from tests.fixtures_faults import (
    CORPUS_SKIPPED,
    CORPUS_USED,
    DISCOVERY_SKIPPED,
    RENAMED_USED,
    find_line,
    own_file,
    read_entry,
    write_fault_corpus,
)
from tests.fixtures_pipeline import retrain_args

GOOD_PER_CLASS = 6
USED = (*CORPUS_USED, *RENAMED_USED)
# retrainer.data.decoding silences Pillow's warning for processes; pytest re-enables warnings per test.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def retrain(*args: object):
    return CliRunner().invoke(retrain_main, [str(arg) for arg in args])


def label_image(*args: object):
    return CliRunner().invoke(label_image_main, [str(arg) for arg in args])


def assert_one_line_error(result, exit_code: int, *fragments: str) -> str:
    """The run exited `exit_code`; its last stderr line is 'Error: ...' with every fragment."""
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in {last!r}"
    return last


# --- every awkward or broken image file, in one run ---------------------------------------------


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory) -> SimpleNamespace:
    """retrain on red/green/blue x 6 good images plus the whole decode corpus in red/, then again
    with --json (the rerun must reuse every vector)."""
    root = tmp_path_factory.mktemp("corpus_run")
    image_dir = make_color_image_dir(root / "images", per_class=GOOD_PER_CLASS)
    corpus = write_fault_corpus(image_dir / "red")
    args = retrain_args(root, image_dir)
    text = retrain(*args)
    rerun = retrain(*args, "--json")
    return SimpleNamespace(root=root, image_dir=image_dir, corpus=corpus, text=text, rerun=rerun,
                           document=json.loads(rerun.stdout) if rerun.exit_code == 0 else None,
                           graph=root / "out" / "graph.pb")


def test_corpus_run_succeeds_without_traceback(corpus_run):
    for result in (corpus_run.text, corpus_run.rerun):
        assert result.exit_code == EXIT_OK, result.output
        assert "Traceback" not in result.stderr
        assert find_line(result.stderr, "Error") is None


@pytest.mark.parametrize("name", sorted(CORPUS_SKIPPED))
def test_unusable_file_is_skipped_with_a_warning_naming_it(corpus_run, name):
    reason = CORPUS_SKIPPED[name]
    path = corpus_run.corpus[name]
    summary = find_line(corpus_run.text.stdout, f"  red/{name}: ")
    assert summary is not None and reason in summary, corpus_run.text.stdout
    warning = find_line(corpus_run.text.stderr, f"WARNING: Skipping {path}: ")
    if name in DISCOVERY_SKIPPED:
        assert warning is None  # left out by name, never opened
    else:
        assert warning is not None and reason in warning, corpus_run.text.stderr
    skipped = {entry["path"]: entry["reason"] for entry in corpus_run.document["skipped"]}
    assert reason in skipped[f"red/{name}"]


@pytest.mark.parametrize("name", USED)
def test_awkward_but_valid_file_is_used(corpus_run, name):
    path = corpus_run.corpus[name]
    assert f"red/{name}" not in {entry["path"] for entry in corpus_run.document["skipped"]}
    assert str(path) not in corpus_run.text.stderr
    cache = BottleneckCache(corpus_run.root / "bottlenecks", TinyExtractor().spec)
    assert cache.path(file_digest(path)).is_file(), f"no vector cached for {name}"


def test_summary_counts_every_usable_image_once(corpus_run):
    document = corpus_run.document
    counts = {label: sum(row.values()) for label, row in document["counts"].items()}
    assert counts == {"blue": GOOD_PER_CLASS, "green": GOOD_PER_CLASS,
                      "red": GOOD_PER_CLASS + len(USED)}
    assert len(document["skipped"]) == len(CORPUS_SKIPPED)
    assert f"Skipped {len(CORPUS_SKIPPED)} files:" in corpus_run.text.stdout
    assert "Images used per class:" in corpus_run.text.stdout
    assert find_line(corpus_run.text.stdout, "  red ").split()[1:4] == [
        str(document["counts"]["red"][split]) for split in ("training", "validation", "testing")
    ]
    # Unreadable files are tried again on the rerun, but no vector is computed twice.
    used = sum(counts.values())
    assert (document["bottlenecks_computed"], document["bottlenecks_reused"]) == (0, used)
    assert f"Bottleneck vectors: {used} computed, 0 reused" in corpus_run.text.stdout


# --- label-image on the same files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled_corpus(corpus_run) -> SimpleNamespace:
    """label-image --json on every corpus file, each named on the command line."""
    assert corpus_run.text.exit_code == EXIT_OK
    names = sorted(corpus_run.corpus)
    result = label_image("--graph", corpus_run.graph, "--json",
                         *(corpus_run.corpus[name] for name in names))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(corpus_run.corpus[name]) for name in names]
    return SimpleNamespace(result=result, lines=dict(zip(names, lines)))


def test_label_image_on_the_corpus_exits_5_without_traceback(labelled_corpus):
    unreadable = len(CORPUS_SKIPPED)  # the fork too: named explicitly, it is tried
    assert_one_line_error(labelled_corpus.result, EXIT_UNREADABLE_IMAGES,
                          f"cannot read {unreadable} of {len(labelled_corpus.lines)} images",
                          f"the other {len(USED)} were classified")


@pytest.mark.parametrize("name", USED)
def test_label_image_classifies_awkward_but_valid_file(labelled_corpus, name):
    line = labelled_corpus.lines[name]
    assert "error" not in line and line["label"] in ("red", "green", "blue")


@pytest.mark.parametrize("name", sorted(set(CORPUS_SKIPPED) - DISCOVERY_SKIPPED))
def test_label_image_reports_unreadable_file(labelled_corpus, corpus_run, name):
    line = labelled_corpus.lines[name]
    assert CORPUS_SKIPPED[name] in line["error"] and "label" not in line
    assert f"WARNING: cannot read {corpus_run.corpus[name]}: " in labelled_corpus.result.stderr


def test_label_image_named_resource_fork_is_unreadable_but_folders_skip_it(corpus_run, tmp_path):
    """Named on the command line, '._IMG_0001.jpg' is tried (and fails); inside a folder, hidden
    files and macOS forks are not images to classify at all."""
    fork = corpus_run.corpus["._IMG_0001.jpg"]
    alone = label_image("--graph", corpus_run.graph, "-q", fork)
    assert_one_line_error(alone, EXIT_UNREADABLE_IMAGES, f"cannot read {fork}: not an image")

    folder = tmp_path / "Fotos mit Ümlaut"
    folder.mkdir()
    Image.new("RGB", (40, 30), (230, 20, 20)).save(folder / "rote Rose 1.jpg")
    (folder / "._rote Rose 1.jpg").write_bytes(fork.read_bytes())
    (folder / ".thumbnail.jpg").write_bytes(b"")
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")  # a symlink loop
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    result = label_image("--graph", corpus_run.graph, "--json", folder)
    assert result.exit_code == EXIT_UNREADABLE_IMAGES, result.output
    lines = {Path(line["path"]).name: line for line in map(json.loads, result.stdout.splitlines())}
    assert set(lines) == {"rote Rose 1.jpg", "loop_a.jpg", "loop_b.jpg"}
    assert lines["rote Rose 1.jpg"]["label"] == "red"
    assert "Too many levels of symbolic links" in lines["loop_a.jpg"]["error"]
    assert_one_line_error(result, EXIT_UNREADABLE_IMAGES, "cannot read 2 of 3 images")


def test_label_image_refuses_a_graph_whose_sidecar_describes_another_graph(corpus_run, tmp_path):
    """A kill between writing the graph and its sidecar (or a graph copied without its sidecar)
    pairs a new graph with old labels: refused, never served."""
    other_dir = make_color_image_dir(tmp_path / "images", {"cyan": (0, 255, 255),
                                                           "magenta": (255, 0, 255),
                                                           "yellow": (255, 255, 0)})
    assert retrain(*retrain_args(tmp_path, other_dir, "--seed", "1")).exit_code == EXIT_OK
    new_graph = tmp_path / "out" / "graph.pb"
    mixed = tmp_path / "deployed"
    mixed.mkdir()
    (mixed / "graph.pb").write_bytes(new_graph.read_bytes())  # new graph, 3 classes ...
    old_sidecar = Path(f"{corpus_run.graph}.meta.json")  # ... with the old run's 3 labels
    (mixed / "graph.pb.meta.json").write_bytes(old_sidecar.read_bytes())
    result = label_image("--graph", mixed / "graph.pb", corpus_run.corpus["rgb.png"])
    assert_one_line_error(result, EXIT_MODEL, "describes another version of", "rerun retrain")
    assert result.stdout == ""

    (mixed / "graph.pb.meta.json").write_bytes(Path(f"{new_graph}.meta.json").read_bytes())
    matching = label_image("--graph", mixed / "graph.pb", "-q", corpus_run.corpus["rgb.png"])
    assert matching.exit_code == EXIT_OK, matching.output


# --- messy folders --------------------------------------------------------------------------------


def test_messy_folder_trains_and_explains_every_left_out_entry(tmp_path):
    """Hidden files, macOS forks and __MACOSX, symlinks (broken, looping, duplicate), non-images,
    empty class folders, non-ASCII and space-containing names: 12 images used, each once."""
    image_dir = make_messy_image_dir(tmp_path / "messy")
    os.symlink("loop_b.jpg", image_dir / "roses" / "loop_a.jpg")  # a file symlink loop
    os.symlink("loop_a.jpg", image_dir / "roses" / "loop_b.jpg")
    os.symlink("top_loop", image_dir / "top_loop")  # a class-folder symlink to itself
    result = retrain(*retrain_args(tmp_path, image_dir, "--json"))
    assert result.exit_code == EXIT_OK, result.output
    assert "Traceback" not in result.stderr
    document = json.loads(result.stdout)
    assert document["labels"] == ["wild tulips u", "roses", "玫瑰"]  # sorted folder names
    counts = {label: sum(row.values()) for label, row in document["counts"].items()}
    assert counts == {"roses": 6, "wild tulips u": 2, "玫瑰": 4}  # every file once (hub#154)
    skipped = {entry["path"]: entry["reason"] for entry in document["skipped"]}
    expected = {
        "roses/._a.jpg": "macOS resource fork",
        "__MACOSX/": "macOS archive metadata folder",
        "roses/.DS_Store": "hidden file",
        ".hidden_class/": "hidden folder",
        "roses/.thumbnails/": "hidden folder",
        "roses/link_same.jpg": "same file as roses/a.jpg",
        "roses/broken.jpg": "broken symbolic link",
        "roses/loop_a.jpg": "broken symbolic link",
        "top_loop": "broken symbolic link",
        "roses/sub/loop/": "symbolic link to a folder",
        "self_link/": "symbolic link to a folder containing --image_dir",
        "roses/notes.txt": "not an image file (extension '.txt')",
        "empty class/": "no images in this class folder",
        "truly empty/": "no images in this class folder",
        "loose.jpg": "not inside a class folder",
    }
    for relpath, reason in expected.items():
        assert reason in skipped[relpath], relpath
    assert "WARNING: Class folder 'truly empty' has no images; it is left out." in result.stderr

    text = retrain(*retrain_args(tmp_path, image_dir))
    assert "  roses/sub/loop/: symbolic link to a folder" in text.stdout
    assert find_line(text.stdout, "  玫瑰 ") is not None


def test_empty_validation_and_test_sets_do_not_crash(tmp_path):
    """retrain.py divided by zero when a split came out empty (tensorflow/hub#173)."""
    image_dir = make_color_image_dir(tmp_path / "images", per_class=3)
    result = retrain(*retrain_args(tmp_path, image_dir, "--validation_percentage", "0",
                                   "--testing_percentage", "0"))
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.startswith("Final test accuracy = n/a (no test images)")
    assert "validation accuracy = n/a (N=0)" in result.stdout


# --- errors: one line, documented exit code ------------------------------------------------------


def _only_loose_images(root: Path) -> Path:
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "photo.jpg")
    return root


def _one_class_with_images(root: Path) -> Path:
    make_color_image_dir(root, {"red": (255, 0, 0)}, per_class=3)
    (root / "tulips").mkdir()
    (root / "tulips" / "._tulip.jpg").write_bytes(b"\x00\x05\x16\x07")
    return root


def _every_image_unreadable(root: Path) -> Path:
    make_color_image_dir(root, per_class=3)
    for path in root.rglob("*.png"):
        path.write_bytes(b"")
    return root


def _one_class_unreadable(root: Path) -> Path:
    make_color_image_dir(root, per_class=4)
    for path in (root / "green").iterdir():
        path.write_bytes(path.read_bytes()[:40])
    for path in (root / "blue").iterdir():
        path.unlink()
    return root


def _clashing_labels(root: Path) -> Path:
    make_color_image_dir(root, {"Red": (255, 0, 0), "red": (250, 0, 0)}, per_class=2)
    return root


DATASET_ERRORS = {
    "image_dir missing": (lambda root: root / "nowhere", EXIT_USAGE, ["does not exist"]),
    "image_dir is a file": (lambda root: (root.write_text("x"), root)[1], EXIT_USAGE,
                            ["is a file, not a folder"]),
    "image_dir empty": (lambda root: (root.mkdir(), root)[1], EXIT_DATA,
                        ["Found no sub-folders", "At least 2 classes are needed"]),
    "only loose images": (_only_loose_images, EXIT_DATA,
                          ["1 image(s) lie directly in it, outside any class folder"]),
    "one class has images": (_one_class_with_images, EXIT_DATA,
                             ['only 1 class folder with images ("red", 3 images)']),
    "every image unreadable": (_every_image_unreadable, EXIT_DATA,
                               ["No decodable training images", "(9 could not be read)"]),
    "one class unreadable": (_one_class_unreadable, EXIT_DATA,
                             ["Only 1 class has decodable training images ('red')"]),
    "labels clash": (_clashing_labels, EXIT_DATA, ['"Red" and "red" both give the label "red"']),
}


@pytest.mark.parametrize("case", DATASET_ERRORS)
def test_unusable_image_dir_is_one_line_and_an_exit_code(tmp_path, case):
    build, exit_code, fragments = DATASET_ERRORS[case]
    image_dir = build(tmp_path / "images")
    assert_one_line_error(retrain(*retrain_args(tmp_path, image_dir)), exit_code, *fragments)


# flag: (path given, folder named in the message). As root (these tests' usual user) chmod stops
# nothing, so each case puts a regular file where a folder must be: that fails for every user.
UNWRITABLE = {
    "--bottleneck_dir": ("a_file/cache", "a_file/cache"),
    "--output_graph": ("a_file/graph.pb", "a_file"),
    "--output_labels": ("a_file/deeper/labels.txt", "a_file/deeper"),
    "--checkpoint_path": ("a_file/checkpoint/head", "a_file/checkpoint"),
    "--summaries_dir": ("a_file/logs", "a_file/logs"),
    "--intermediate_output_graphs_dir": ("a_file/intermediate", "a_file/intermediate"),
    "--audit_file": ("a_file/audit.json", "a_file"),
}


@pytest.mark.parametrize("flag", UNWRITABLE)
def test_unwritable_output_fails_before_any_work(tmp_path, flag):
    image_dir = make_color_image_dir(tmp_path / "images", per_class=2)
    (tmp_path / "a_file").write_text("in the way")
    target, folder = UNWRITABLE[flag]
    result = retrain(*retrain_args(tmp_path, image_dir, flag, tmp_path / target,
                                   "--intermediate_store_frequency", "5"))
    assert_one_line_error(result, EXIT_USAGE, f"cannot write to {tmp_path / folder} (for {flag}): ",
                          f"{tmp_path / 'a_file'} is a file, not a folder",
                          f"Pass a writable path with {flag}")
    assert "Computing bottleneck" not in result.stderr
    assert not list((tmp_path / "bottlenecks").rglob("*.npy"))


def test_existing_folder_as_output_file_is_refused(tmp_path):
    image_dir = make_color_image_dir(tmp_path / "images", per_class=2)
    (tmp_path / "labels_dir").mkdir()
    result = retrain(*retrain_args(tmp_path, image_dir, "--output_labels", tmp_path / "labels_dir"))
    assert_one_line_error(result, EXIT_USAGE, "--output_labels", "is a folder; expected a file")


# --- the cache and the outputs --------------------------------------------------------------------


class _Payload:
    """Unpickling this would create a folder: proof that cache entries are never unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_corrupted_cache_entries_are_recomputed_never_read(tmp_path):
    image_dir = make_color_image_dir(tmp_path / "images", per_class=4)
    args = retrain_args(tmp_path, image_dir, "--json")
    first = json.loads(retrain(*args).stdout)
    cache = BottleneckCache(tmp_path / "bottlenecks", TinyExtractor().spec)
    paths = sorted(image_dir.rglob("*.png"))
    entries = [cache.path(file_digest(path)) for path in paths]
    originals = [read_entry(entry) for entry in entries]
    marker = tmp_path / "unpickled"
    corrupt = {
        0: lambda entry: entry.write_bytes(entry.read_bytes()[:-7]),  # truncated
        1: lambda entry: entry.write_bytes(b""),
        2: lambda entry: entry.write_bytes(os.urandom(200)),
        3: lambda entry: np.save(entry, np.zeros(5, np.float32)),  # wrong shape
        4: lambda entry: np.save(entry, np.full(16, np.inf, np.float32)),
        5: lambda entry: np.save(entry, np.array([_Payload(marker)], object), allow_pickle=True),
    }
    for index, damage in corrupt.items():
        damage(own_file(entries[index]))

    result = retrain(*args)
    assert result.exit_code == EXIT_OK, result.output
    document = json.loads(result.stdout)
    assert (document["bottlenecks_computed"], document["bottlenecks_reused"]) == (
        len(corrupt), len(paths) - len(corrupt))
    for index in corrupt:
        assert f"Cached bottleneck {entries[index]} is " in result.stderr
    assert not marker.exists(), "a cache entry was unpickled"
    for entry, original in zip(entries, originals):
        np.testing.assert_allclose(read_entry(entry), original, rtol=1e-5, atol=1e-6)
    assert document["test_accuracy"] == first["test_accuracy"]


def test_outputs_and_cache_are_readable_by_other_users(tmp_path):
    """Files get the umask's permissions, not a temp file's owner-only 0600 (tensorflow/hub#302:
    users sharing a machine clashed over retrain.py's files)."""
    image_dir = make_color_image_dir(tmp_path / "images", per_class=6)
    previous = os.umask(0o022)
    try:
        result = retrain(*retrain_args(tmp_path, image_dir, "--saved_model_dir",
                                       tmp_path / "out" / "saved_model"))
    finally:
        os.umask(previous)
    assert result.exit_code == EXIT_OK, result.output
    out = tmp_path / "out"
    files = [out / "graph.pb", out / "graph.pb.meta.json", out / "labels.txt",
             *(tmp_path / "bottlenecks").rglob("*.npy")]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((out / "saved_model").stat().st_mode) == 0o755
