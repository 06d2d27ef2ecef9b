"""Check: TensorFlow's own TFLite `label_image.py` example gives label-image's top-1 on a .tflite.

Re-implements only that example's documented preprocessing -- PIL `Image.open(path).resize((W,
H))`, and for float models `(np.float32(pixels) - input_mean) / input_std` with the flags
`--input_mean 0 --input_std 255`; uint8 models get the raw pixels -- then runs the interpreter and
takes the arg-max. The one addition: `.convert("RGB")`, since the example assumes RGB files and
Fashion-MNIST's are grayscale. Labels come from the labels.txt zipped into the .tflite (as a Task
Library client reads them). Prints the agreement and exits 1 on any disagreement.

    PYTHONPATH=. python scripts/check_tflite_label_image_example.py --model m.tflite IMAGE...
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

INPUT_MEAN, INPUT_STD = 0.0, 255.0  # the example's flags for float models


def example_top1(interpreter, labels: list[str], image_path: Path) -> str:
    """What TF's label_image.py prints first for `image_path`."""
    source = interpreter.get_input_details()[0]
    height, width = int(source["shape"][1]), int(source["shape"][2])
    image = Image.open(image_path).convert("RGB").resize((width, height))
    pixels = np.expand_dims(image, axis=0)
    if source["dtype"] == np.float32:
        pixels = (np.float32(pixels) - INPUT_MEAN) / INPUT_STD
    interpreter.set_tensor(source["index"], pixels)
    interpreter.invoke()
    results = np.squeeze(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    return labels[int(results.argsort()[-1])]


def label_image_top1(model: Path, images: list[Path]) -> list[str]:
    """label-image's top-1 per image (its library, `retrainer.classify`, in this process)."""
    from retrainer.classify.config import ClassifyConfig
    from retrainer.classify.run import classify_images

    results = classify_images(ClassifyConfig(graph=model, top_k=1), images)
    return [result.predictions[0].label if result.predictions else "" for result in results]


def compare(model: Path, images: list[Path]) -> list[tuple[Path, str, str]]:
    """(image, example's top-1, label-image's top-1) for every image where they differ."""
    data = model.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        labels = archive.read("labels.txt").decode("utf-8").splitlines()
    from retrainer.classify.tflite import make_interpreter

    interpreter = make_interpreter(data)
    interpreter.allocate_tensors()
    expected = [example_top1(interpreter, labels, path) for path in images]
    found = label_image_top1(model, images)
    return [(path, a, b) for path, a, b in zip(images, expected, found) if a != b]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args()
    images = sorted(path for argument in args.images for path in
                    (sorted(p for p in argument.rglob("*") if p.is_file() and not p.name.startswith("."))
                     if argument.is_dir() else [argument]))
    differing = compare(args.model, images)
    print(f"label_image.py example vs label-image on {args.model.name}: agree on "
          f"{len(images) - len(differing)} of {len(images)} images")
    for path, a, b in differing[:10]:
        print(f"  {path}: example {a}, label-image {b}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
