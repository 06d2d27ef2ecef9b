"""Discovery's listing for a remote --image_dir (gs://, ram://...), through tf.io.gfile.

The same rules by name as a local folder (hidden and macOS entries, extensions); object stores
have no symbolic or hard links, so nothing is deduplicated. Imported only for a URL, so local
discovery stays TF-free.
"""

from __future__ import annotations

from retrainer.data.names import extension_reason, folder_name_reason, hidden_file_reason
from retrainer.io.storage import RemotePath, walk


def remote_classes(
    root: RemotePath, ignored: list[tuple[str, str]]
) -> tuple[list[str], list[list[str]]]:
    """Class folder names (sorted) and, per class, the relpaths of its images.

    Args:
        root: the image folder.
        ignored: (relpath, reason) of every entry skipped is appended here.
    """
    per_class: dict[str, list[str]] = {}
    for folder, subfolders, names in walk(root):
        for name in list(subfolders):
            reason = folder_name_reason(name)
            if reason is not None:
                ignored.append((_join(folder, name) + "/", reason))
                subfolders.remove(name)  # in place: the walk does not go below it
        if not folder:
            per_class = {name: [] for name in subfolders}
            ignored.extend((name, hidden_file_reason(name) or extension_reason(name)
                            or "not inside a class folder") for name in names)
            continue
        images = per_class[folder.split("/", 1)[0]]
        for name in names:
            reason = hidden_file_reason(name) or extension_reason(name)
            if reason:
                ignored.append((_join(folder, name), reason))
            else:
                images.append(_join(folder, name))
    return list(per_class), list(per_class.values())


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name
