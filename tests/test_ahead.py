"""--tta auto's mirrored sample drawn ahead (pipeline/ahead.py), beside the audit and the head fit:
the same sample the check would draw in place, used only for the validation images it was drawn
from."""

from __future__ import annotations

import dataclasses

import numpy as np

from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.config import RetrainConfig
from retrainer.data.discovery import discover_images
from retrainer.data.split import VALIDATION
from retrainer.engines.factory import create_engine
from retrainer.pipeline.ahead import start_mirroring
from retrainer.training.tta import mirrored_sample
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_extractors import TinyExtractor


def test_the_sample_drawn_ahead_is_the_one_drawn_in_place(tmp_path):
    image_dir = make_color_image_dir(tmp_path / "images", per_class=12)
    config = RetrainConfig(image_dir=image_dir, bottleneck_dir=tmp_path / "cache",
                           validation_percentage=40)
    engine = create_engine(TinyExtractor(), "float32")
    collection = discover_images(image_dir, validation_percentage=40)
    bottlenecks = compute_bottlenecks([image.path for image in collection.images], engine,
                                      tmp_path / "cache")
    # as the tta stage names them: `ImageCollection.paths` (strings in a local folder)
    paths = collection.paths(image for image, ok in zip(collection.images, bottlenecks.ok)
                             if ok and image.split == VALIDATION)
    assert len(paths) >= 2 and all(isinstance(path, str) for path in paths)
    sample = start_mirroring(config, engine, collection, bottlenecks)
    drawn = sample(paths)
    assert drawn is not None
    in_place = mirrored_sample(engine, paths, config.training.seed, tmp_path / "other cache")
    np.testing.assert_array_equal(drawn.rows, in_place.rows)
    np.testing.assert_allclose(drawn.vectors, in_place.vectors, atol=1e-6)
    assert sample(paths[1:]) is None  # e.g. the audit moved a duplicate to another split
    off = dataclasses.replace(config, tta="none")
    assert start_mirroring(off, engine, collection, bottlenecks)(paths) is None
