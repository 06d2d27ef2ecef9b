"""Which files and folders image discovery picks up, by name alone (no file system access).

Shared by local discovery, remote discovery (retrainer/data/_remote_discovery.py), `label-image`'s
folder expansion and `retrain-extract`'s bucket listing, so all four agree.
"""

from __future__ import annotations

import os

from PIL import Image

# Formats picked up by extension (compared lower-case); only those this Pillow build can read.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".gif", ".bmp", ".dib",
     ".webp", ".tif", ".tiff", ".avif", ".ppm", ".pgm", ".pbm", ".pnm"}
) & frozenset(Image.registered_extensions())
_MACOS_ARCHIVE_FOLDER = "__MACOSX"


def folder_name_reason(name: str) -> str | None:
    """Why a folder is skipped by its name alone (hidden, macOS archive metadata), or None."""
    if name.startswith("."):
        return "hidden folder"
    if name == _MACOS_ARCHIVE_FOLDER:
        return "macOS archive metadata folder"
    return None


def hidden_file_reason(name: str) -> str | None:
    """Why a file is skipped as hidden (macOS "._" fork, dot file), or None."""
    if name.startswith("._"):
        return "macOS resource fork"
    if name.startswith("."):
        return "hidden file"
    return None


def extension_reason(name: str) -> str | None:
    """Why a file is not picked up by its extension, or None for an image extension."""
    extension = os.path.splitext(name)[1].lower()
    if extension in IMAGE_EXTENSIONS:
        return None
    return f"not an image file (extension {extension!r})" if extension else (
        "not an image file (no extension)"
    )


def is_image_name(name: str) -> bool:
    """A visible file name with an image extension, in any case (decoding decides the rest)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_image_relpath(relpath: str) -> bool:
    """Whether discovery picks up the file at `relpath` by its path alone (for file lists from
    elsewhere, e.g. a bucket listing): inside a class folder, no hidden or "__MACOSX" folder on
    the way, an image name that is not a macOS "._" fork.

    Args:
        relpath: POSIX path relative to the image folder, e.g. "roses/a/img_1.jpg".
    """
    *folders, name = relpath.split("/")
    return bool(folders) and is_image_name(name) and not any(
        not folder or folder.startswith(".") or folder == _MACOS_ARCHIVE_FOLDER
        for folder in folders
    )


def image_extensions_text() -> str:
    """The extensions we pick up, for messages: "apng, avif, bmp, ..."."""
    return ", ".join(sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS))
