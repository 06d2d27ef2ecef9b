"""The content-keyed memo (retrainer/cache/memo.py): a value made once is read back; a damaged,
partial or foreign one is made again; a cache that cannot be written costs a warning, not the run;
a sealed value is read back only whole and unaltered."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from retrainer.cache.layout import picture_path
from retrainer.cache.memo import Memo, memo_key
from retrainer.engines._model_cache import cached_model, model_path


def test_a_value_is_made_once_then_read_back(tmp_path):
    memo = Memo(tmp_path, picture_path)
    made = []

    def make():
        made.append(1)
        return b"value"

    key = memo_key("picture", (1, 2), [3.0])
    assert memo.get(key, make) == b"value" and memo.get(key, make) == b"value"
    assert made == [1]
    assert [path.name for path in tmp_path.rglob("*") if path.is_file()] == [f"{key}.png"]
    assert memo_key("picture", (1, 2), [3.5]) != key


def test_an_unusable_value_is_made_again_and_replaced(tmp_path):
    memo = Memo(tmp_path, picture_path)
    key = memo_key("x")
    path = picture_path(tmp_path, key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncat")
    assert memo.get(key, lambda: b"whole value", lambda data: data.startswith(b"whole")) \
        == b"whole value"
    assert path.read_bytes() == b"whole value"


def test_an_unwritable_cache_is_one_warning_that_says_what_to_do(tmp_path, caplog, monkeypatch):
    """Every failed write (the memo's, the converted engine model's) is at debug level; the
    warning is one line per process and cache, with the fix: XDG_CACHE_HOME for the user's
    cache, --bottleneck_dir for another folder."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    user_cache = Memo(blocked / "retrainer", picture_path)
    specs = Memo(blocked / "retrainer" / "extraction-specs", picture_path)
    elsewhere = Memo(blocked / "bottlenecks", picture_path)
    with caplog.at_level(logging.WARNING):
        for memo in (user_cache, specs, elsewhere, user_cache, elsewhere):
            assert memo.get(memo_key("x"), lambda: b"made") == b"made"
        user_cache.write_sealed(memo_key("y"), "test kind v2", {}, b"body")
        assert cached_model(model_path("x", "int8", ("key",)), lambda: b"model") == b"model"
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        f"Cannot write retrainer's cache {blocked / 'retrainer'} (Not a directory): what it keeps "
        "for the next run is made again on every run; set XDG_CACHE_HOME to a writable folder.",
        f"Cannot write retrainer's cache {blocked / 'bottlenecks'} (Not a directory): what it "
        "keeps for the next run is made again on every run; pass --bottleneck_dir a writable "
        "folder."]


_IMPORT_MATPLOTLIB = """
import sys
from retrainer.cli import configure_logging
if sys.argv[1] == "cli":
    configure_logging("WARN")
else:
    import logging
    logging.basicConfig(level=logging.WARNING)
import matplotlib
import matplotlib.font_manager
print(matplotlib.get_cachedir())
"""


def test_an_unusable_cache_folder_gets_no_notices_from_matplotlib(tmp_path):
    """matplotlib works in a temporary folder of its own, as without retrainer, but its notices
    about it (every run) are hidden: retrainer's warning already names the folder."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    env = {name: value for name, value in os.environ.items() if name != "MPLCONFIGDIR"}
    env["XDG_CACHE_HOME"] = str(blocked)
    runs = {how: subprocess.run([sys.executable, "-c", _IMPORT_MATPLOTLIB, how], env=env,
                                capture_output=True, text=True, check=True)
            for how in ("cli", "plain")}
    assert "Matplotlib created a temporary" in runs["plain"].stderr  # what the CLI hides
    assert runs["cli"].stderr == ""
    assert runs["cli"].stdout.startswith(os.path.join(tempfile.gettempdir(), "matplotlib-"))


def test_no_local_root_keeps_nothing(tmp_path):
    for root in (None, "gs://bucket/cache"):
        memo = Memo(root, picture_path)
        assert memo.read(memo_key("x")) is None
        memo.write(memo_key("x"), b"data")  # nothing, no error


_HEADERS = st.dictionaries(st.text(max_size=8), st.one_of(
    st.integers(), st.text(max_size=12), st.lists(st.integers(0, 2**40), max_size=3)), max_size=4)


@settings(max_examples=60, deadline=None)
@given(header=_HEADERS, body=st.binary(max_size=300), data=st.data())
def test_a_sealed_value_is_read_back_whole_or_not_at_all(header, body, data):
    """Whatever is kept, it is read back as written; cut anywhere, any byte changed, bytes
    appended or another kind asked for, it is not read (so the caller makes it again)."""
    with tempfile.TemporaryDirectory() as root:
        memo = Memo(root, picture_path)
        key = memo_key("sealed")
        memo.write_sealed(key, "test kind v2", header, body)
        assert memo.read_sealed(key, "test kind v2") == (header, body)
        assert memo.read_sealed(key, "test kind v1") is None  # an older or another kind
        path = picture_path(root, key)
        kept = path.read_bytes()
        cut = data.draw(st.integers(0, len(kept) - 1), label="cut")
        path.write_bytes(kept[:cut])
        assert memo.read_sealed(key, "test kind v2") is None
        where = data.draw(st.integers(0, len(kept) - 1), label="where")
        bit = data.draw(st.integers(0, 7), label="bit")
        flipped = bytearray(kept)
        flipped[where] ^= 1 << bit
        path.write_bytes(bytes(flipped))
        assert memo.read_sealed(key, "test kind v2") is None
        path.write_bytes(kept + data.draw(st.binary(min_size=1, max_size=4), label="tail"))
        assert memo.read_sealed(key, "test kind v2") is None


def test_a_sealed_value_of_the_old_framing_is_not_read(tmp_path):
    """Files of the three hand-written framings before (kind line, then a digest of the body
    alone) are refused, so they are made again, never misread."""
    memo = Memo(tmp_path, picture_path)
    key = memo_key("old")
    body = b"model bytes"
    path = picture_path(tmp_path, key)
    path.parent.mkdir(parents=True)
    for old in (b"retrainer feature map model v1\n" + hashlib.sha256(body).hexdigest().encode()
                + b"\n" + body,
                b"retrainer graph template v1\n" + json.dumps(
                    {"roles": {}, "sha256": hashlib.sha256(body).hexdigest()}).encode()
                + b"\n" + body):
        path.write_bytes(old)
        for kind in ("feature map model v2", "graph template v2", "checkpoint template v2"):
            assert memo.read_sealed(key, kind) is None
