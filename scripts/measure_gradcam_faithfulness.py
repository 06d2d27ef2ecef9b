"""Measure whether Grad-CAM heat maps point at the object: the peak-in-box rate.

A classifier is retrained (default EfficientNet-Lite0, default flags) on plain Fashion-MNIST items
(the train subset, each item filling its picture). Then held-out t10k items are pasted, enlarged
to --item-size pixels, at a seeded random position on a blank (black, like the items' own
background) 224x224 canvas, and `label-image --explain`'s code path (retrainer.classify with
explain_dir) gives each canvas's heat-map peak. Printed: the share of peaks inside the pasted
item's square and inside its tight box (pixels brighter than 30), with N, the chance rate (the
boxes' mean share of the canvas) and the cost per image.

    PYTHONPATH=. python scripts/measure_gradcam_faithfulness.py [--per-class 100] [--canvases 300]
        [--item-size 84] [--work runs/gradcam_faithfulness] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CANVAS = 224
INK = 30  # a pixel brighter than this belongs to the item (its background is 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--canvases", type=int, default=300)
    parser.add_argument("--item-size", type=int, default=84)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "gradcam_faithfulness")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run (10 images per class, 20 canvases): checks it works")
    args = parser.parse_args()
    if args.smoke:
        args.per_class, args.canvases = 10, 20
    per_class_items = args.canvases // 10 + 1  # each canvas gets its own t10k item
    images = args.work / f"images_{args.per_class}"
    holdout = args.work / f"holdout_{per_class_items}"
    for folder, subset, count in ((images, "train", args.per_class),
                                  (holdout, "t10k", per_class_items)):
        if not folder.is_dir():
            subprocess.run([sys.executable, str(REPO / "examples" / "fashion_mnist.py"),
                            "--idx-dir", str(REPO / ".cache" / "fashion-mnist"), "--out",
                            str(folder), "--per-class", str(count), "--subset", subset],
                           check=True, stdout=sys.stderr)  # stdout is for the JSON result

    from retrainer.classify.config import ClassifyConfig
    from retrainer.classify.run import classify_images
    from retrainer.config import RetrainConfig
    from retrainer.pipeline import run

    out = args.work / "out"
    config = RetrainConfig(
        image_dir=images, output_graph=out / "output_graph.pb",
        output_labels=out / "output_labels.txt", summaries_dir=out / "logs",
        bottleneck_dir=args.work / "bottlenecks", checkpoint_path=out / "checkpoint" / "head",
        audit_file=out / "audit.json", metrics_file=None, report_html=None, skip_audit=True,
        how_many_training_steps=200 if args.smoke else 4000, show_progress=False,
    )
    result = run(config)
    rng = np.random.default_rng(args.seed)
    items = sorted(path for path in holdout.rglob("*.png"))
    rng.shuffle(items)
    with tempfile.TemporaryDirectory() as scratch:
        canvases, boxes = _paste(items, args.canvases, args.item_size, rng, Path(scratch))
        started = time.perf_counter()
        explain = ClassifyConfig(graph=config.output_graph, explain_dir=Path(scratch) / "maps")
        peaks = [result_.peak for result_ in classify_images(explain, canvases)]
        seconds = time.perf_counter() - started
    square = np.mean([_inside(peak, box["square"]) for peak, box in zip(peaks, boxes)])
    tight = np.mean([_inside(peak, box["tight"]) for peak, box in zip(peaks, boxes)])
    chance = {kind: np.mean([_area(box[kind]) for box in boxes]) / CANVAS ** 2
              for kind in ("square", "tight")}
    print(json.dumps({
        "data": f"Fashion-MNIST: trained on {args.per_class} plain items per class (train "
                f"subset), explained on t10k items enlarged to {args.item_size} px on a blank "
                f"{CANVAS}x{CANVAS} canvas",
        "extractor": result.extractor_id, "test_accuracy_plain": result.test_accuracy,
        "N": len(peaks), "peak_in_square": round(float(square), 4),
        "peak_in_tight_box": round(float(tight), 4),
        "chance_square": round(float(chance["square"]), 4),
        "chance_tight_box": round(float(chance["tight"]), 4),
        "seconds_per_image": round(seconds / len(peaks), 4),
    }, indent=2))


def _paste(items: list[Path], count: int, size: int, rng: np.random.Generator,
           folder: Path) -> tuple[list[Path], list[dict]]:
    """`count` canvases, each one item at a random position; returns their files and boxes."""
    canvases, boxes = [], []
    for index in range(count):
        item = Image.open(items[index % len(items)]).convert("L").resize(
            (size, size), Image.Resampling.BILINEAR)
        y, x = (int(value) for value in rng.integers(0, CANVAS - size + 1, 2))
        canvas = Image.new("L", (CANVAS, CANVAS), 0)
        canvas.paste(item, (x, y))
        rows, columns = np.nonzero(np.asarray(item) > INK)
        tight = ((y + rows.min(), x + columns.min(), y + rows.max() + 1, x + columns.max() + 1)
                 if rows.size else (y, x, y + size, x + size))
        boxes.append({"square": (y, x, y + size, x + size), "tight": tight})
        canvases.append(folder / f"canvas_{index:04d}.png")
        canvas.convert("RGB").save(canvases[-1])
    return canvases, boxes


def _inside(peak: tuple[int, int], box: tuple[int, int, int, int]) -> bool:
    top, left, bottom, right = box
    return top <= peak[0] < bottom and left <= peak[1] < right


def _area(box: tuple[int, int, int, int]) -> int:
    top, left, bottom, right = box
    return (bottom - top) * (right - left)


if __name__ == "__main__":
    main()
