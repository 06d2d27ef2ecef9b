"""The report's heat maps: where the model looked, beside misclassified and some correct test images.

The heat maps (`retrainer.explain`: CAM, which equals Grad-CAM for the retrained linear head at
half the work; Grad-CAM for any other graph) come from the run's own classifier graph, frozen in
memory exactly as it is exported (with the int8 engine, its own model's last map:
`explain.lite_cam`), over the test images decoded as training decoded them; each
figure shows the image as the network saw it and the same image with the heat map of the class
its caption names as predicted over it.
Every misclassified test image (up to the gallery's limit) and the first `per_class` correctly
classified test images of each class are explained; 0 turns the section off. The maps are cached
under --bottleneck_dir by a hash of the frozen graph and the images' pixels: a rerun that trains
the same head on the same vectors (a warm rerun with the same seed) does not compute them again.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from retrainer.cache.layout import heat_map_gallery_path, heat_maps_path
from retrainer.cache.memo import Memo, memo_key
from retrainer.data.batches import file_digest
from retrainer.data.decoding import UnreadableImageError, load_image
from retrainer.errors import ModelError
from retrainer.explain.heatmap import overlay
from retrainer.explain.lite_cam import LiteCam
from retrainer.explain.scope import EXPLAINABLE, explainable
from retrainer.formats import graph_contract
from retrainer.io.host import usable_cpus
from retrainer.io.storage import is_url
from retrainer.reports.html import Section, paragraph, png_image
from retrainer.reports.sections import MAX_GALLERY_IMAGES, THUMBNAIL_SIZE, thumbnail_image

log = logging.getLogger(__name__)

SECTION_ID = "explanations"
TITLE = "Where the model looked (class activation maps)"  # CAM, or Grad-CAM (module docstring)
_BATCH = 16


class Explained(NamedTuple):
    """A test image to explain: the file, its name in the dataset, its true label (a multi-label
    image's labels joined by ";"), the predicted (top-1) label and its index: the class whose
    heat map is drawn."""

    path: Any
    relpath: str
    true_label: str
    predicted_label: str
    predicted_class: int = -1  # its index in the labels; -1: the graph's own top class

    @property
    def correct(self) -> bool:
        """The prediction is the image's label, or one of a multi-label image's labels."""
        return self.predicted_label in self.true_label.split(";")


def choose_images(test_images: Sequence[Any], evaluation: Any, labels: Sequence[str],
                  per_class: int) -> list[Explained]:
    """Every misclassified test image (up to MAX_GALLERY_IMAGES), then per class the first
    `per_class` correct ones, in test-split order, up to MAX_GALLERY_IMAGES correct ones in all
    (with many classes: each class's first, then each class's second, ...); an image sampled
    twice counts once. A multi-label image's top-1 is correct when it is one of its labels."""
    wrong: list[Explained] = []
    right: list[list[Explained]] = [[] for _ in labels]  # per class, up to per_class
    seen: set[int] = set()
    for position, predicted in zip(evaluation.positions.tolist(), evaluation.predictions.tolist()):
        if position in seen:
            continue
        seen.add(position)
        image = test_images[position]
        item = Explained(image.path, image.relpath,
                         ";".join(labels[index] for index in image.label_indices),
                         labels[predicted], predicted)
        if not item.correct:
            wrong.append(item)
        elif len(right[predicted]) < per_class:
            right[predicted].append(item)
    correct = [group[rank] for rank in range(per_class) for group in right if rank < len(group)]
    chosen = {id(item): item for item in correct[:MAX_GALLERY_IMAGES]}  # kept in class order:
    ordered = [item for group in right for item in group if id(item) in chosen]
    return wrong[:MAX_GALLERY_IMAGES] + ordered


def explanation_section(
    graph: Callable[[], bytes], input_name: str, output_name: str, extractor_name: str,
    input_size: tuple[int, int], images: Sequence[Explained], per_class: int,
    cache_root: Optional[os.PathLike[str] | str] = None,
    load_tensorflow: Callable[[], None] = lambda: None,
    lite: Optional[LiteCam] = None,
    graph_sha256: Callable[[bytes], str] = graph_contract.graph_sha256,
) -> Section:
    """The section; a note instead of pictures when the extractor cannot be explained.

    Args:
        graph: returns the frozen classifier GraphDef's bytes (called only when pictures are
            made).
        input_name / output_name: its input and probability tensor names ("Placeholder:0").
        extractor_name: which extractor built it (the scope of Grad-CAM).
        input_size: (H, W) the network takes.
        images: what to explain (`choose_images`).
        per_class: the --report_explanations count, for the text.
        cache_root: where the maps are cached (--bottleneck_dir); None: not cached.
        load_tensorflow: called before maps are computed (kept ones need no TensorFlow).
        lite: CAM without TensorFlow, when the graph is an unmodified extractor's with a
            linear head (`retrainer.explain.lite_cam`): used when its map model is kept, else
            made from this graph's.
        graph_sha256: the SHA-256 (hex) of the graph's bytes, which name its maps and figures
            (the exporter's: it hashed the graph it wrote already).
    """
    if not explainable(extractor_name):
        return Section(SECTION_ID, TITLE, paragraph(
            f"No heat maps: extractor {extractor_name} is not one of {EXPLAINABLE}.", "note"))
    if not images:
        return Section(SECTION_ID, TITLE, paragraph("No test images to explain.", "note"))
    started = time.perf_counter()
    try:
        graph_bytes = graph()
    except (ModelError, LookupError) as error:  # an extra never fails a run
        log.warning("Report: no heat maps: %s", error)
        return Section(SECTION_ID, TITLE, paragraph(f"No heat maps: {error}.", "note"))
    galleries = Memo(cache_root, heat_map_gallery_path)
    graph_digest = graph_sha256(graph_bytes)
    key = _gallery_key(graph_digest, input_name, output_name, input_size, images)
    kept = galleries.read(key) if key is not None else None
    if kept is not None:
        return Section(SECTION_ID, TITLE, _body(images, per_class, started, kept.decode()))
    # PIL and numpy release the GIL while they resize, blend and encode: one figure per core
    with ThreadPoolExecutor(max_workers=usable_cpus(), thread_name_prefix="heat-maps") as pool:
        readable, pixels = [], []
        for image in images:
            try:
                pixels.append(load_image(image.path, input_size))
                readable.append(image)
            except UnreadableImageError as error:  # e.g. deleted since training
                log.warning("Report: no heat map for %s: %s", image.relpath, error.reason)
        try:
            maps = _heat_maps(graph_bytes, graph_digest, input_name, output_name, pixels,
                              np.array([image.predicted_class for image in readable], np.int64),
                              cache_root, load_tensorflow, lite)
        except (_NoHeatMaps, ModelError, LookupError) as error:  # an extra never fails a run
            log.warning("Report: no heat maps: %s", error)
            return Section(SECTION_ID, TITLE, paragraph(f"No heat maps: {error}.", "note"))
        gallery = "\n".join(pool.map(_figure, readable, pixels, maps))
    if key is not None and len(readable) == len(images):
        galleries.write(key, gallery.encode())
    return Section(SECTION_ID, TITLE, _body(images, per_class, started, gallery))


def _body(images: Sequence[Explained], per_class: int, started: float, gallery: str) -> str:
    wrong = sum(not image.correct for image in images)
    body = paragraph(
        f"Heat maps of the predicted class over {wrong} misclassified test images and up to "
        f"{per_class} correct ones per class (--report_explanations {per_class}): red is where "
        "that class's evidence lies. Each image is shown squared, as the network saw it, then "
        f"with its heat map; made in {time.perf_counter() - started:.1f} s.")
    return body + '<div class="gallery">\n' + gallery + "\n</div>"


def _gallery_key(graph_digest: str, input_name: str, output_name: str,
                 input_size: tuple[int, int], images: Sequence[Explained]) -> Optional[str]:
    """What the figures are made from: the graph (its SHA-256), the images' bytes and captions;
    None when an image cannot be read (its figure is then left out, as the warning says)."""
    files = []
    for image in images:
        if is_url(image.path):
            return None
        try:
            files.append(file_digest(image.path))
        except OSError:
            return None
    return memo_key("heat-map gallery", graph_digest, input_name, output_name, input_size, files,
                    [tuple(image) for image in images])


class _NoHeatMaps(Exception):
    """The graph could not be explained (the reason is the message)."""


def _heat_maps(graph: bytes, graph_digest: str, input_name: str, output_name: str,
               pixels: list[np.ndarray], classes: np.ndarray,
               cache_root: Optional[os.PathLike[str] | str], load_tensorflow: Callable[[], None],
               lite: Optional[LiteCam] = None) -> list[np.ndarray]:
    """The heat maps of `classes` (int64 [N]; -1: the graph's top class) over `pixels` (uint8
    [H, W, 3] each) through the frozen graph (its bytes; `graph_digest`: their SHA-256): read
    back when the same graph explained
    the same pixels and classes before (no TensorFlow then), else computed and kept;
    `load_tensorflow()` is called before computing.

    Raises:
        _NoHeatMaps: the graph has no map to explain, an op without a gradient, a failed op.
    """
    if not pixels:
        return []
    digest = hashlib.sha256(graph_digest.encode())  # the graph's, then the pixels
    for image in pixels:
        digest.update(np.ascontiguousarray(image).data)
    memo = Memo(cache_root, heat_maps_path)
    key = memo_key("heat maps", input_name, output_name, len(pixels), digest.hexdigest(),
                   ",".join(map(str, classes.tolist())), lite.source if lite else None)

    def usable(data: bytes) -> bool:
        try:
            stored = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError:
            return False
        return stored.dtype == np.float32 and stored.ndim == 3 and len(stored) == len(pixels)

    stored = memo.read(key, usable)
    if stored is not None:
        return list(np.load(io.BytesIO(stored), allow_pickle=False))
    maps = lite.maps(pixels, classes) if lite is not None and (classes >= 0).all() else None
    if maps is None:
        load_tensorflow()
        maps = _computed_maps(graph, input_name, output_name, pixels, classes, lite)
    buffer = io.BytesIO()
    np.save(buffer, np.stack(maps).astype(np.float32), allow_pickle=False)
    memo.write(key, buffer.getvalue())
    return maps


def _computed_maps(graph: bytes, input_name: str, output_name: str,
                   pixels: list[np.ndarray], classes: np.ndarray,
                   lite: Optional[LiteCam] = None) -> list[np.ndarray]:
    """CAM where it equals Grad-CAM (a retrained linear head: `retrainer.explain.cam`, half the
    work), else Grad-CAM; in TensorFlow (imported here: a rerun reads the kept maps without it).
    With `lite`, CAM's map model is kept for the next runs' maps without TensorFlow."""
    import tensorflow as tf

    from retrainer.explain.cam import class_activation_maps
    from retrainer.explain.gradcam import GradCam

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph)
    batches = [(np.stack(pixels[start:start + _BATCH]).astype(np.float32) / 255.0,
                classes[start:start + _BATCH]) for start in range(0, len(pixels), _BATCH)]
    try:
        cam = (class_activation_maps(graph_def, input_name, output_name)
               if (classes >= 0).all() else None)
        if cam is not None:
            try:
                maps = [heat for images, chosen in batches for heat in cam.maps(images, chosen)]
                if lite is not None and lite.model() is None:
                    _keep_map_model(cam, lite)
                return maps
            finally:
                cam.close()
        gradcam = GradCam.from_graph_def(graph_def, input_name, output_name, "the trained model")
        try:
            return [heat for images, chosen in batches for heat in gradcam.explain(
                images, None if (chosen < 0).any() else chosen).maps]
        finally:
            gradcam.close()
    except (ModelError, LookupError) as error:
        raise _NoHeatMaps(str(error)) from error
    except tf.errors.OpError as error:
        raise _NoHeatMaps(error.message) from error


def _keep_map_model(cam: Any, lite: LiteCam) -> None:
    """Convert and keep CAM's map model (a failed conversion costs the next runs TensorFlow's
    import for their heat maps, never this run)."""
    try:
        lite.remember(cam.feature_map_model())
    except Exception as error:  # the converter raises several unrelated types
        log.warning("Report: heat maps will need TensorFlow again next time (%s)",
                    str(error).strip().splitlines()[0] if str(error).strip() else
                    type(error).__name__)


def _figure(image: Explained, pixels: np.ndarray, heat: np.ndarray) -> str:
    verdict = "correct" if image.correct else "wrong"
    caption = (f"{html.escape(image.relpath)}<br>true: {html.escape(image.true_label)}<br>"
               f"predicted: {html.escape(image.predicted_label)} ({verdict})")
    heat_map = png_image(overlay(pixels, heat, size=THUMBNAIL_SIZE),  # as the gallery shows it
                         f"heat map of {image.relpath}", "thumbnail")
    return (f'<figure class="pair">{thumbnail_image(image.path, image.relpath)}{heat_map}'
            f"<figcaption>{caption}</figcaption></figure>")
