"""The content-keyed memo (retrainer/cache/memo.py): a value made once is read back; a damaged,
partial or foreign one is made again; a cache that cannot be written costs a warning, not the run."""

from __future__ import annotations

import logging

from retrainer.cache.layout import picture_path
from retrainer.cache.memo import Memo, memo_key


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


def test_an_unwritable_cache_is_a_warning(tmp_path, caplog):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    memo = Memo(blocked, picture_path)
    with caplog.at_level(logging.WARNING):
        assert memo.get(memo_key("x"), lambda: b"made") == b"made"
        assert memo.get(memo_key("x"), lambda: b"made again") == b"made again"
    assert sum("will be made again" in record.getMessage() for record in caplog.records) == 2


def test_no_local_root_keeps_nothing(tmp_path):
    for root in (None, "gs://bucket/cache"):
        memo = Memo(root, picture_path)
        assert memo.read(memo_key("x")) is None
        memo.write(memo_key("x"), b"data")  # nothing, no error
