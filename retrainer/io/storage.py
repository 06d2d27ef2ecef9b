"""Local and remote paths: a user path with a scheme (gs://, ram://, s3://...) goes through tf.io.gfile.

`pathlib.Path("gs://b/x")` collapses to "gs:/b/x", so `as_path` keeps URLs as a `RemotePath`: the
small part of pathlib's API the stages use, backed by tf.io.gfile. Local paths stay `pathlib.Path`
and keep plain os/pathlib I/O (no TensorFlow import, same speed). Remote failures come out as
`OSError`s naming the URL (NotFoundError -> FileNotFoundError, ...), so the handling written for
local files applies; an unknown scheme is a `UsageError`.

Object stores cannot rename: `gfile.rename` on gs:// is a copy and a delete, so a remote "atomic"
write (temp name, then rename over) only ensures a reader never sees a half-written object.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple, Union

from retrainer.errors import UsageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# Remote leftovers this old are abandoned: a killed run's temporaries (swept here; object stores'
# modification times are not always kept, ram:// has none, so the name carries the write's start)
# and unfinished shard runs (`shards.remove_abandoned_runs`). Far longer than any writer is silent.
ABANDONED_AFTER_S = 3 * 24 * 3600


def is_url(path: Any) -> bool:
    """True for a path with a scheme ("gs://bucket/x", "ram://x"): it is read through tf.io.gfile."""
    if isinstance(path, RemotePath):
        return True
    return isinstance(path, str) and _SCHEME.match(path) is not None


def as_path(value: Union[str, os.PathLike[str]]) -> "AnyPath":
    """A user path as a `RemotePath` (URLs) or a `pathlib.Path` (everything else)."""
    if isinstance(value, (Path, RemotePath)):
        return value
    text = os.fspath(value)
    return RemotePath(text) if is_url(text) else Path(text)


class _Stat(NamedTuple):
    st_size: int


class RemotePath(os.PathLike[str]):
    """A URL with the pathlib methods the pipeline uses; every call goes through tf.io.gfile."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        scheme = _SCHEME.match(url)
        if scheme is None:
            raise ValueError(f"not a URL: {url!r}")
        rest = url[scheme.end():].rstrip("/")
        self.url = f"{scheme.group(0)}{rest}"

    def __fspath__(self) -> str:
        return self.url

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: "RemotePath") -> bool:
        return self.url < other.url

    def __truediv__(self, other: Union[str, os.PathLike[str]]) -> "RemotePath":
        return RemotePath(f"{self.url}/{os.fspath(other).strip('/')}")

    @property
    def _scheme_end(self) -> int:
        return len(_scheme(self.url))

    @property
    def name(self) -> str:
        head, _, tail = self.url[self._scheme_end:].rpartition("/")
        return tail if head else ""  # the bucket itself has no name

    @property
    def parent(self) -> "RemotePath":
        head, _, _ = self.url[self._scheme_end:].rpartition("/")
        return RemotePath(self.url[:self._scheme_end] + head) if head else self

    @property
    def parents(self) -> list["RemotePath"]:
        found, path = [], self
        while path.parent != path:
            path = path.parent
            found.append(path)
        return found

    @property
    def suffix(self) -> str:
        return os.path.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return os.path.splitext(self.name)[0]

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    def exists(self) -> bool:
        with remote_errors(self.url):
            return _gfile().exists(self.url) and self._not_a_ram_prefix()

    def is_dir(self) -> bool:
        with remote_errors(self.url):
            return _gfile().isdir(self.url) and self._not_a_ram_prefix()

    def _not_a_ram_prefix(self) -> bool:
        """TensorFlow's ram:// matches names without a "/" boundary ("x/head" exists and is a
        folder once "x/head.index" does): there, also ask the parent folder for the name."""
        if not self.url.startswith("ram://") or self.parent == self:
            return True
        names = _gfile().listdir(self.parent.url)
        return self.name in {name.rstrip("/") for name in names}

    def is_file(self) -> bool:
        return self.exists() and not self.is_dir()

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """gfile.makedirs (object stores have no real folders; `mode` does not apply)."""
        if self.is_dir() and not exist_ok:
            raise FileExistsError(errno.EEXIST, "folder exists", self.url)
        with remote_errors(self.url):
            _gfile().makedirs(self.url)

    def iterdir(self) -> Iterator["RemotePath"]:
        with remote_errors(self.url):
            names = _gfile().listdir(self.url)
        return iter([self / name.rstrip("/") for name in sorted(names)])

    def glob(self, pattern: str) -> list["RemotePath"]:
        with remote_errors(self.url):
            return [RemotePath(match) for match in _gfile().glob(f"{self.url}/{pattern}")]

    def read_bytes(self) -> bytes:
        with remote_errors(self.url), _gfile().GFile(self.url, "rb") as stream:
            return stream.read()

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def stat(self) -> _Stat:
        with remote_errors(self.url):
            return _Stat(_gfile().stat(self.url).length)

    def unlink(self) -> None:
        with remote_errors(self.url):
            _gfile().remove(self.url)


AnyPath = Union[Path, RemotePath]


def read_bytes(path: Union[str, os.PathLike[str]]) -> bytes:
    """The file's bytes: plain `open` for local paths, tf.io.gfile for URLs."""
    if is_url(path):
        return RemotePath(os.fspath(path)).read_bytes()
    with open(path, "rb") as stream:
        return stream.read()


def open_for_reading(path: Union[str, os.PathLike[str]]) -> BinaryIO:
    """A binary stream of the file (a URL's bytes are read whole into memory)."""
    if is_url(path):
        return io.BytesIO(read_bytes(path))
    return open(path, "rb")


def _remote(url: Union[str, os.PathLike[str]]) -> RemotePath:
    return url if isinstance(url, RemotePath) else RemotePath(os.fspath(url))


def _scheme(url: str) -> str:
    """"gs://" of "gs://bucket/x" ("" for a path without one)."""
    match = _SCHEME.match(url)
    return match.group(0) if match else ""


def write_remote_bytes(url: Union[str, os.PathLike[str]], data: bytes) -> None:
    """Write under a temporary name beside `url`, then rename over it (on gs:// a copy + delete)."""
    target = _remote(url)
    temp = target.parent / f".{target.name}.{secrets.token_hex(8)}-{int(time.time())}.tmp"
    with remote_errors(target.url):
        gfile = _gfile()
        try:
            with gfile.GFile(temp.url, "wb") as stream:
                stream.write(data)
            gfile.rename(temp.url, target.url, overwrite=True)
        except BaseException:
            with contextlib.suppress(Exception):
                gfile.remove(temp.url)
            raise


def remove_stale_remote_temporaries(url: Union[str, os.PathLike[str]],
                                    max_age_s: float = ABANDONED_AFTER_S) -> list[RemotePath]:
    """Delete `write_remote_bytes` temporaries of `url` started over `max_age_s` ago.

    One listing of `url`'s folder (not a bucket walk). A live writer's temporary is seconds old,
    so it stays. Best effort: a folder that cannot be listed (a write-only bucket) is left as is.
    Returns the temporaries deleted.
    """
    target = _remote(url)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.[0-9a-f]{{16}}-(\d+)\.tmp$")
    oldest_allowed = time.time() - max_age_s
    removed: list[RemotePath] = []
    with contextlib.suppress(OSError), remote_errors(target.url):
        gfile = _gfile()
        if not gfile.isdir(target.parent.url):
            return []
        for name in gfile.listdir(target.parent.url):
            match = pattern.match(name)
            if match and int(match.group(1)) < oldest_allowed:
                with contextlib.suppress(Exception):  # another sweeper got it first
                    gfile.remove((target.parent / name).url)
                    removed.append(target.parent / name)
    return removed


def probe_writable(folder: RemotePath) -> None:
    """Create the folder, then write and delete a small object in it (an OSError if it cannot)."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".retrainer-probe.{secrets.token_hex(8)}"
    write_remote_bytes(probe, b"")
    probe.unlink()


def replace_remote_directory(url: Union[str, os.PathLike[str]], fill: Callable[[Path], None]) -> None:
    """Build the folder locally with `fill(folder)`, delete the old remote one, upload the new.

    Not atomic (object stores cannot rename a folder): a reader during the upload may see part of
    it. Each file is uploaded with `write_remote_bytes`.
    """
    with tempfile.TemporaryDirectory() as scratch:
        staging = Path(scratch) / "staging"
        staging.mkdir()
        fill(staging)
        remove_tree(_remote(url))
        upload_tree(staging, url)


def upload_tree(local: Path, url: Union[str, os.PathLike[str]]) -> None:
    """Copy a local folder and everything below it to `url` (each file via `write_remote_bytes`)."""
    remote = _remote(url)
    for folder, _, names in os.walk(local):
        relative = Path(folder).relative_to(local).as_posix()
        target = remote if relative == "." else remote / relative
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            write_remote_bytes(target / name, Path(folder, name).read_bytes())


def download_tree(url: Union[str, os.PathLike[str]], local: Path) -> None:
    """Copy a remote folder and everything below it into the local folder `local`."""
    remote = _remote(url)
    for relative, _, names in walk(remote):
        folder = local / relative
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            source = remote / relative / name if relative else remote / name
            (folder / name).write_bytes(source.read_bytes())


def move(source: AnyPath, target: AnyPath) -> None:
    """Rename a file over `target` (`os.replace` locally; on object stores a copy + delete)."""
    if isinstance(source, Path):
        os.replace(source, target)
        return
    with remote_errors(source.url):
        _gfile().rename(source.url, os.fspath(target), overwrite=True)


def remove_tree(path: AnyPath) -> None:
    """Delete a folder and everything below it; a missing one is fine."""
    if isinstance(path, Path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError), remote_errors(path.url):
        _gfile().rmtree(path.url)


def tree_size(path: AnyPath) -> int:
    """Bytes of a file, or of every file below a folder."""
    if isinstance(path, Path):
        if path.is_dir():
            return sum(Path(folder, name).stat().st_size
                       for folder, _, names in os.walk(path) for name in names)
        return path.stat().st_size
    if not path.is_dir():
        return path.stat().st_size
    with remote_errors(path.url):
        return sum(_gfile().stat(f"{folder}/{name}").length
                   for folder, _, names in _gfile().walk(path.url) for name in names)


def walk(root: AnyPath) -> Iterator[tuple[str, list[str], list[str]]]:
    """(folder relative to `root` in POSIX form, "" for root; sub-folders; files), top-down.

    As with os.walk (used for local folders), removing names from the sub-folder list keeps the
    walk out of them. Remote listings come sorted.
    """
    if isinstance(root, Path):
        for folder, subfolders, names in os.walk(root):
            relative = Path(folder).relative_to(root).as_posix()
            yield ("" if relative == "." else relative), subfolders, names
        return
    with remote_errors(root.url):
        for folder, subfolders, names in _gfile().walk(root.url):
            subfolders[:] = sorted(name.rstrip("/") for name in subfolders)
            relative = folder.rstrip("/")[len(root.url):].strip("/")
            yield relative, subfolders, sorted(names)


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Turn TensorFlow's file-system errors on `url` into OSErrors naming it (UsageError for an
    unknown scheme)."""
    import tensorflow as tf  # the remote backend: only URLs load TensorFlow

    try:
        yield
    except tf.errors.UnimplementedError:
        scheme = _scheme(url) or url
        raise UsageError(
            f"no file system for {scheme} (path {url}): TensorFlow reads local paths, gs:// and "
            "ram:// (others, e.g. s3://, need the package that registers them, such as "
            "tensorflow-io); pass a local path or one of those."
        ) from None
    except tf.errors.NotFoundError:
        raise FileNotFoundError(errno.ENOENT, "not found", url) from None
    except tf.errors.PermissionDeniedError as error:
        raise PermissionError(errno.EACCES, _first_line(error), url) from None
    except tf.errors.OpError as error:
        raise OSError(errno.EIO, _first_line(error), url) from None


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", "") or str(error) or type(error).__name__
    return text.splitlines()[0]


def _gfile() -> Any:
    import tensorflow as tf  # the remote backend: only URLs load TensorFlow

    return tf.io.gfile
