"""--tta auto's mirrored sample drawn ahead (pipeline/ahead.py), beside the audit and the head fit:
the same sample the check would draw in place, used only for the validation images it was drawn
from."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from retrainer.cache.bottlenecks import compute_bottlenecks
from retrainer.cli.retrain import main as retrain_main
from retrainer.config import RetrainConfig
from retrainer.data.batches import decode_files, file_digest
from retrainer.data.discovery import discover_images
from retrainer.data.split import VALIDATION
from retrainer.engines.factory import create_engine
from retrainer.errors import EXIT_DATA
from retrainer.pipeline.ahead import Ahead, mirror_positions, start_mirroring
from retrainer.training.tta import mirrored_sample
from tests.fixtures_data import make_color_image_dir
from tests.fixtures_extractors import TinyExtractor
from tests.fixtures_pipeline import retrain_args


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
    with Ahead() as ahead:
        sample = start_mirroring(ahead, config, engine, collection, bottlenecks)
        drawn = sample(paths)
        assert drawn is not None
        in_place = mirrored_sample(engine, paths, config.training.seed, tmp_path / "other cache")
        np.testing.assert_array_equal(drawn.rows, in_place.rows)
        np.testing.assert_allclose(drawn.vectors, in_place.vectors, atol=1e-6)
        assert sample(paths[1:]) is None  # e.g. the audit moved a duplicate to another split
        off = dataclasses.replace(config, tta="none")
        assert start_mirroring(ahead, off, engine, collection, bottlenecks)(paths) is None


def test_the_stage_keeps_the_mirror_images_the_sample_would_decode(tmp_path):
    """The bottleneck stage keeps the validation images' mirror images (from the decode that made
    their vectors): the sample drawn from them is the one drawn by decoding the files again."""
    image_dir = make_color_image_dir(tmp_path / "images", per_class=12)
    config = RetrainConfig(image_dir=image_dir, bottleneck_dir=tmp_path / "cache",
                           validation_percentage=40)
    engine = create_engine(TinyExtractor(), "float32")
    collection = discover_images(image_dir, validation_percentage=40)
    positions = mirror_positions(config, collection)
    assert positions == [position for position, image in enumerate(collection.images)
                         if image.split == VALIDATION] and len(positions) >= 2
    assert mirror_positions(dataclasses.replace(config, tta="none"), collection) == []
    all_paths = collection.paths()
    bottlenecks = compute_bottlenecks(all_paths, engine, tmp_path / "cache", batch_size=5,
                                      mirrored=positions)
    assert sorted(bottlenecks.mirrored) == positions
    pixels, _ = decode_files([all_paths[position] for position in positions],
                             engine.spec.input_size)
    for position, image in zip(positions, pixels):
        np.testing.assert_array_equal(bottlenecks.mirrored[position], image[:, ::-1])
        assert bottlenecks.digests[position] == file_digest(all_paths[position])
    paths = [all_paths[position] for position in positions]
    with Ahead() as ahead:
        drawn = start_mirroring(ahead, config, engine, collection, bottlenecks)(paths)
    assert drawn is not None
    in_place = mirrored_sample(engine, paths, config.training.seed, tmp_path / "other cache")
    np.testing.assert_array_equal(drawn.rows, in_place.rows)
    np.testing.assert_array_equal(drawn.vectors, in_place.vectors)
    # cached under the same keys: a rerun reads them
    again = mirrored_sample(engine, paths, config.training.seed, tmp_path / "cache",
                            threading.Event())
    np.testing.assert_array_equal(again.vectors, in_place.vectors)


def test_a_run_that_fails_after_the_vectors_leaves_nothing_running(tmp_path):
    """Every image in the validation split: the run stops (no training images) right after the
    mirroring started; it returns only once that work is done, so nothing writes to the cache
    after it (this left a thread writing while a test removed its folder)."""
    images = make_color_image_dir(tmp_path / "images", per_class=10, size=(800, 800))
    args = retrain_args(tmp_path, images, "--validation_percentage", "100",
                        "--testing_percentage", "0", steps=None)
    before = set(threading.enumerate())
    result = CliRunner().invoke(retrain_main, args)
    assert result.exit_code == EXIT_DATA, result.output
    assert "No decodable training images" in result.stderr
    left = [thread.name for thread in set(threading.enumerate()) - before if not thread.daemon]
    assert left == []  # was: mirroring_0 and its decode threads


def test_a_stopped_sample_decodes_and_keeps_nothing_more(tmp_path):
    """The stages ended by an exception: `Ahead` tells its work to stop, and the mirrored sample
    decodes no further chunk (nothing more is written to the cache)."""
    image_dir = make_color_image_dir(tmp_path / "images", per_class=4)
    paths = discover_images(image_dir).paths()
    engine = create_engine(TinyExtractor(), "float32")
    with pytest.raises(KeyError), Ahead() as ahead:
        raise KeyError("a stage failed")
    assert ahead.stopping.is_set()
    stopped = mirrored_sample(engine, paths, 0, tmp_path / "cache", ahead.stopping)
    assert len(stopped.rows) == 0 and len(stopped.vectors) == 0
    assert not (tmp_path / "cache").exists() or not any(
        path.is_file() for path in (tmp_path / "cache").rglob("*"))
    with Ahead() as finished:
        pass
    assert not finished.stopping.is_set()
